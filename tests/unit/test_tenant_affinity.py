"""Tenant affinity of the sync workers (issue #15) on the fakes: the stable partition of a
tenant, the share of each live worker, forwarding by tenant (an address in two tenants: a copy
each, syncing its own tenant only), and work without a delivery kept to a worker's own
tenants."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import orjson
from sync_fakes import FakeBroker, FakeLeases, FakeLeaseTable, FakePartitionedWork, FakeSources

from adapters.deliveries.partitions import assigned, partition_of
from runners.services.affinity import Affinity
from runners.services.engine import Engine
from runners.services.mail_directory import MailboxRef
from runners.services.sync_worker import SyncWorker

SHARED = "mia@shared.test"


def test_a_tenants_partition_is_the_same_in_every_process_and_version() -> None:
    # Python's hash() of a str changes per process (PYTHONHASHSEED): never usable here
    here = [partition_of(f"t{i}", 16) for i in range(8)]
    assert here == [11, 9, 10, 6, 13, 9, 11, 5]  # pinned: a change would move every tenant
    code = "from adapters.deliveries.partitions import partition_of as p; " \
           "print([p(f't{i}', 16) for i in range(8)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert other.stdout.strip() == str(here)


def test_live_workers_share_every_partition_exactly_once() -> None:
    for members in range(1, 7):
        shares = [assigned(rank, members, 16) for rank in range(members)]
        assert sorted(p for share in shares for p in share) == list(range(16))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def engine_with(tenants: list[str]) -> Engine:
    engine = Engine.open_in_memory()
    for tenant in tenants:
        lines = [{"cmd": "AddUser", "user": "mia", "email": f"mia@{tenant}.test",
                  "role": "member"},
                 {"cmd": "ConnectMailbox", "mailbox": "mbx", "user": "mia", "provider": "gmail",
                  "address": SHARED}]
        report = engine.apply_lines([json.dumps({"tenant": tenant, **x}) for x in lines])
        assert not report.rejected
    return engine


def affinity(engine: Engine, broker: FakeBroker, table: FakeLeaseTable
             ) -> tuple[SyncWorker, FakePartitionedWork, Affinity]:
    worker = SyncWorker(engine, FakeSources(), batch_size=10)
    queue = FakePartitionedWork(broker)
    return worker, queue, Affinity(queue, FakeLeases(table), worker, every=0.0)


def test_workers_split_the_partitions_and_take_over_those_of_one_that_left() -> None:
    engine, broker, table = engine_with([]), FakeBroker(16), FakeLeaseTable()
    (_, qa, a), (_, qb, b) = affinity(engine, broker, table), affinity(engine, broker, table)
    a.rebalance()
    assert a.held == set(range(16))  # alone: everything
    b.rebalance()  # b's share is still a's
    assert b.held == set()
    a.rebalance()  # a sees two members, lets go of b's share
    b.rebalance()
    assert (a.held, b.held) == (assigned(0, 2, 16), assigned(1, 2, 16))
    assert (qa.owned, qb.owned) == (a.held, b.held)
    b.leave()
    a.rebalance()
    assert a.held == set(range(16)) and qb.owned == set()


def test_an_address_in_two_tenants_goes_to_each_tenants_partition_syncing_its_own_only() -> None:
    engine, broker, table = engine_with(["acme", "globex"]), FakeBroker(16), FakeLeaseTable()
    worker, queue, aff = affinity(engine, broker, table)
    aff.rebalance()
    worker.sources.box(SHARED)  # type: ignore[attr-defined]

    async def scenario() -> None:
        await queue.publish("gmail", "gmail:1", orjson.dumps(
            {"delivery_id": "gmail:1", "subscription": "s", "email_address": SHARED,
             "history_id": 1}))
        await queue.publish("gmail", "gmail:2", orjson.dumps(
            {"delivery_id": "gmail:2", "subscription": "s", "email_address": "nobody@x.test",
             "history_id": 1}))
        assert await aff.route(10, 0.1) == 2
        assert broker.incoming == {}  # forwarded and acked
        where = {(item.delivery_id, item.tenant): p for p, items in broker.parts.items()
                 for item in items.values()}
        assert where == {("gmail:1", "acme"): partition_of("acme", 16),
                         ("gmail:1", "globex"): partition_of("globex", 16),
                         ("gmail:2", None): partition_of("gmail:2", 16)}
        handled = {}
        for delivery in await queue.fetch(10, 0.1):
            handled[(delivery.delivery_id, delivery.tenant)] = worker.handle(delivery)
            await queue.ack(delivery)
        assert handled[("gmail:1", "acme")].mailboxes == [MailboxRef("acme", "mbx")]
        assert handled[("gmail:1", "globex")].mailboxes == [MailboxRef("globex", "mbx")]
        assert handled[("gmail:2", None)].note == "unknown_mailbox"

    asyncio.run(scenario())


def test_a_worker_catches_up_its_own_tenants_and_leaves_the_others_pending() -> None:
    engine, broker, table = engine_with(["acme", "globex"]), FakeBroker(16), FakeLeaseTable()
    worker, _, aff = affinity(engine, broker, table)
    aff.held = {partition_of("acme", 16)}
    assert partition_of("globex", 16) not in aff.held
    assert [o.mailboxes for o in worker.catch_up()] == [[MailboxRef("acme", "mbx")]]
    assert worker.directory.pending == {MailboxRef("globex", "mbx")}  # for its owner
    aff.held.add(partition_of("globex", 16))  # globex's worker died: this one took over
    assert [o.mailboxes for o in worker.catch_up()] == [[MailboxRef("globex", "mbx")]]
