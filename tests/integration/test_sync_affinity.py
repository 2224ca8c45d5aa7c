"""Tenant affinity end to end (issue #15): two sync workers on real PostgreSQL and JetStream,
composed as `crmsync run sync` composes them (`open_work`), with a fake provider. Each
tenant's deliveries are handled only by the worker owning its partition; when a worker stops,
the other takes its partitions and drains them; every message is synced once (E6)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from nats_streams import drop_streams
from sync_fakes import FakeSources, message

from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.partitions import partition_of
from adapters.eventstore.mailbox_locks_postgres import PostgresLocks
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.bootstrap.settings import load_settings
from runners.entrypoints.sync_loop import LoopOptions, run
from runners.entrypoints.sync_runner import open_work
from runners.services.affinity import Affinity
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

TENANTS = [f"t{i}" for i in range(6)]
SHARED = "shared@both.test"  # one provider mailbox connected in t0 and t1


class Recording:
    """The shared fake provider, noting which worker opened which tenant's mailbox."""

    def __init__(self, sources: FakeSources, name: str, seen: list[tuple[str, str]]) -> None:
        self.sources, self.name, self.seen = sources, name, seen

    def open(self, tenant: str, mailbox: Any) -> Any:
        self.seen.append((self.name, tenant))
        return self.sources.open(tenant, mailbox)


def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def synced(engine: Engine, tenant: str) -> list[tuple[str, str]]:
    return [(e.mailbox, e.message.id) for _, e in engine.events(tenant)
            if isinstance(e, ev.MessageSynced)]


def test_each_tenant_is_synced_by_its_partitions_owner_and_a_stopped_workers_are_drained(
        postgres_url: str, nats_url: str) -> None:
    setup = open_engine("unused.db", postgres_url)
    setup.follow = False
    boxes: dict[str, list[str]] = {}  # tenant -> addresses
    for tenant in TENANTS:
        boxes[tenant] = [f"u@{tenant}.test", *([SHARED] if tenant in ("t0", "t1") else [])]
        lines = [{"cmd": "AddUser", "user": "u", "email": f"u@{tenant}.test", "role": "member"}]
        lines += [{"cmd": "ConnectMailbox", "mailbox": f"m{i}", "user": "u",
                   "provider": "gmail", "address": a} for i, a in enumerate(boxes[tenant])]
        report = setup.apply_lines([json.dumps({"tenant": tenant, **x}) for x in lines])
        assert not report.rejected
    sources = FakeSources()
    addresses = sorted({a for found in boxes.values() for a in found})
    stream, prefix = f"T{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}.hooks"
    settings = load_settings({"CRMSYNC_NATS_URL": nats_url, "CRMSYNC_NATS_STREAM": stream,
                              "CRMSYNC_NATS_SUBJECT_PREFIX": prefix,
                              "CRMSYNC_NATS_DURABLE": "w"})
    seen: list[tuple[str, str]] = []
    stops = {name: threading.Event() for name in "ab"}
    affinities: dict[str, Affinity] = {}
    pushed = {"n": 0}

    def expected(tenant: str) -> int:
        return sum(len(sources.box(a).current()) for a in boxes[tenant])

    def all_synced() -> bool:
        return all(len(synced(setup, t)) >= expected(t) for t in TENANTS)

    async def push_round(inbox: JetStreamInbox) -> None:
        for address in addresses:
            box = sources.box(address)
            box.add(*(message(len(box.history) + k, days_ago=0.5) for k in range(3)))
            pushed["n"] += 1
            await inbox.store("gmail", f"gmail:{pushed['n']}", orjson.dumps(
                {"delivery_id": f"gmail:{pushed['n']}", "subscription": "s",
                 "email_address": address, "history_id": len(box.history)}))

    def worker_thread(name: str) -> None:
        engine = open_engine("unused.db", postgres_url)
        engine.follow = False
        worker = SyncWorker(engine, Recording(sources, name, seen), PostgresLocks(postgres_url),
                            batch_size=5)
        queue, affinity = open_work("unused.db", postgres_url, settings, worker)
        assert affinity is not None
        affinities[name] = affinity

        async def main() -> None:
            try:
                await run(worker, queue, stops[name], LoopOptions(poll=0.2, imap_interval=3600),
                          affinity=affinity)
            finally:
                await queue.close()

        try:
            asyncio.run(main())
        finally:
            worker.locks.close()
            engine.close()

    def settled(names: str) -> bool:
        held = [affinities[n].held if n in affinities else set() for n in names]
        return sorted(p for h in held for p in h) == list(range(16)) and \
            len({len(h) for h in held}) == 1

    async def scenario() -> None:
        inbox = JetStreamInbox(nats_url, stream=stream, subject_prefix=prefix)
        threads = {n: threading.Thread(target=worker_thread, args=(n,)) for n in "ab"}
        try:
            for thread in threads.values():
                thread.start()
            await asyncio.to_thread(until, lambda: settled("ab"), "8 partitions each")
            before = len(seen)
            for _ in range(3):
                await push_round(inbox)
            await asyncio.to_thread(until, all_synced, "every message synced")
            owners = {n: set(affinities[n].held) for n in "ab"}
            handled = seen[before:]
            for name, tenant in handled:
                assert partition_of(tenant, 16) in owners[name], (name, tenant)
            assert {t for _, t in handled} == set(TENANTS)
            # b stops (its leases go with it); a takes its partitions and drains them
            stops["b"].set()
            await asyncio.to_thread(threads["b"].join)
            await asyncio.to_thread(until, lambda: settled("a"), "a holds all 16")
            before = len(seen)
            await push_round(inbox)
            await asyncio.to_thread(until, all_synced, "every message synced after b stopped")
            assert {n for n, _ in seen[before:]} == {"a"}
            assert {t for _, t in seen[before:]} == set(TENANTS)
            await drained(nats_url, stream)  # the last deliveries find nothing new: E5
        finally:
            for stop in stops.values():
                stop.set()
            for thread in threads.values():
                if thread.is_alive():
                    await asyncio.to_thread(thread.join)
            await inbox.close()

    try:
        asyncio.run(scenario())
        for tenant in TENANTS:  # counts: every message in each of the tenant's boxes, once
            got = synced(setup, tenant)
            assert len(got) == len(set(got)) == expected(tenant), tenant
        assert expected("t0") == 2 * 12 and pushed["n"] == 4 * len(addresses)
    finally:
        setup.close()
        asyncio.run(drop_streams(nats_url, stream, f"{stream}_DEAD", f"{stream}_PART"))


async def drained(nats_url: str, stream: str) -> None:
    """Wait until nothing is left: every forwarded delivery acked (work-queue retention deletes
    it) and nothing pending on the incoming consumer."""
    import nats

    nc = await nats.connect(nats_url)
    left: tuple[int, int, int] = (-1, -1, -1)
    try:
        js = nc.jetstream()
        for _ in range(600):
            parts = await js.stream_info(f"{stream}_PART")
            incoming = await js.consumer_info(stream, "w")
            left = (parts.state.messages, incoming.num_pending, incoming.num_ack_pending)
            if left == (0, 0, 0):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not drained: {left}")
    finally:
        await nc.close()
