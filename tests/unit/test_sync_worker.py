"""The sync worker's logic (issue #4) on an in-memory engine, hand-written fake providers and the
fake work queue: routing, batches, cursors, resyncs (S2, L3), L1 skips, L4, L5, dead letters."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import orjson
import pytest
from sync_fakes import FakeSources, FakeWorkQueue, message

from adapters.deliveries.model import GraphChange
from adapters.deliveries.work_queue import Delivery
from adapters.errors import DeliveryStoreError
from domain import events as ev
from runners.entrypoints.sync_loop import LoopOptions, process, run
from runners.services.engine import Engine
from runners.services.mail_directory import MailboxRef, Unroutable, delivery_address
from runners.services.sync_worker import SyncWorker

TENANT = "acme"
ADDRESS = "mia@acme.test"


def setup(threshold: float | None = None) -> tuple[Engine, FakeSources, SyncWorker]:
    engine = Engine.open_in_memory()
    lines: list[dict[str, Any]] = [
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "AddUser", "user": "root", "email": "root@acme.test", "role": "admin"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": ADDRESS, "backfill_days": 30},
    ]
    if threshold is not None:
        lines.insert(0, {"cmd": "ConfigureTenant", "mass_delete_threshold": threshold})
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **x}) for x in lines])
    assert not report.rejected, report.rejected
    sources = FakeSources()
    return engine, sources, SyncWorker(engine, sources, batch_size=3)


def command(engine: Engine, cmd: dict[str, Any]) -> None:
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **cmd})])
    assert not report.rejected, report.rejected


def gmail_delivery(n: int, address: str = ADDRESS, attempts: int = 1) -> Delivery:
    payload = orjson.dumps({"delivery_id": f"gmail:{n}", "subscription": "s",
                            "email_address": address, "history_id": n})
    return Delivery("gmail", f"gmail:{n}", payload, attempts)


def events(engine: Engine) -> list[ev.DomainEvent]:
    return [e for _, e in engine.events(TENANT)]


def of(engine: Engine, cls: type[ev.DomainEvent]) -> list[Any]:
    return [e for e in events(engine) if isinstance(e, cls)]


def mailbox(engine: Engine) -> Any:
    return engine.state(TENANT).mailboxes["mia-gmail"]


def test_s2_first_sync_backfills_the_window_only_and_stores_the_cursor() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1, days_ago=40), message(2, days_ago=5), message(3, days_ago=1))
    outcome = worker.handle(gmail_delivery(1))
    assert outcome.resynced and outcome.synced == 2
    synced = {e.message.id for e in of(engine, ev.MessageSynced)}
    assert synced == {"m2", "m3"}  # m1 is older than backfill_days
    assert [e.reason for e in of(engine, ev.MailboxResyncStarted)] == ["first_sync"]
    assert mailbox(engine).cursor == "3"


def test_s14_a_redelivered_webhook_changes_nothing() -> None:
    engine, sources, worker = setup()
    sources.box(ADDRESS).add(message(1), message(2))
    worker.handle(gmail_delivery(1))
    before = engine.state(TENANT).seq
    again = worker.handle(gmail_delivery(1))
    assert again.synced == 0 and again.events == 0
    assert engine.state(TENANT).seq == before


def test_changes_since_the_cursor_sync_update_and_advance_in_batches() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1))
    worker.handle(gmail_delivery(1))
    box.add(*(message(i) for i in range(2, 9)))
    box.update(message(1, labels=["INBOX", "STARRED"], read=True))
    seq_before = engine.state(TENANT).seq
    outcome = worker.handle(gmail_delivery(2))
    assert outcome.synced == 7
    updated = of(engine, ev.MessageUpdated)
    assert [(u.id, u.labels, u.read) for u in updated] == [("m1", ["INBOX", "STARRED"], True)]
    assert mailbox(engine).cursor == str(len(box.history))
    # 7 SyncMessage + 1 UpdateMessage + 1 AdvanceMailboxCursor in batches of 3 commands
    assert engine.state(TENANT).seq == seq_before + 9
    cursor_events = of(engine, ev.MailboxCursorAdvanced)
    assert cursor_events[-1].delivery_id == "gmail:2"


def test_s13_a_batch_is_applied_oldest_first_so_a_reply_joins_its_parent() -> None:
    engine, sources, worker = setup()
    parent = message(1, days_ago=3)
    reply = message(2, days_ago=2, in_reply_to="<m1@ext.test>")
    sources.box(ADDRESS).add(reply, parent)  # the provider lists the reply first
    worker.handle(gmail_delivery(1))
    threads = {e.message.id: e.thread for e in of(engine, ev.MessageSynced)}
    assert threads["m1"] == threads["m2"]


def test_l3_expired_cursor_resyncs_the_window_and_deletes_nothing() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1), message(2))
    worker.handle(gmail_delivery(1))
    box.delete("m1")
    box.add(message(3))
    box.expired_below = len(box.history)  # the stored cursor is too old now
    outcome = worker.handle(gmail_delivery(2))
    assert outcome.resynced
    assert [e.reason for e in of(engine, ev.MailboxResyncStarted)] == ["first_sync",
                                                                      "cursor_expired"]
    assert not of(engine, ev.MessageDeletedAtProvider)  # L4: never inferred from absence
    assert {e.message.id for e in of(engine, ev.MessageSynced)} == {"m1", "m2", "m3"}
    assert mailbox(engine).cursor == str(len(box.history))


def test_l5_a_page_of_mass_deletions_is_held_as_one_batch() -> None:
    engine, sources, worker = setup(threshold=0.5)
    box = sources.box(ADDRESS)
    box.add(*(message(i) for i in range(1, 5)))
    worker.handle(gmail_delivery(1))
    box.delete("m1", "m2", "m3")  # 3 of 4 > 50 %
    worker.handle(gmail_delivery(2))
    assert not of(engine, ev.MessageDeletedAtProvider)
    assert sorted(e.id for e in of(engine, ev.MessageDeletionHeld)) == ["m1", "m2", "m3"]
    assert mailbox(engine).suspect and mailbox(engine).stored == 4


def test_s12_a_small_deletion_batch_applies() -> None:
    engine, sources, worker = setup(threshold=0.5)
    box = sources.box(ADDRESS)
    box.add(*(message(i) for i in range(1, 5)))
    worker.handle(gmail_delivery(1))
    box.delete("m1")
    worker.handle(gmail_delivery(2))
    assert [e.id for e in of(engine, ev.MessageDeletedAtProvider)] == ["m1"]
    assert mailbox(engine).stored == 3


def test_l1_deactivated_user_delivery_is_skipped_without_fetching_and_caught_up() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1))
    worker.handle(gmail_delivery(1))
    cursor = mailbox(engine).cursor
    command(engine, {"cmd": "DeactivateUser", "user": "mia"})
    box.add(message(2))
    calls = len(box.calls)
    outcome = worker.handle(gmail_delivery(2))
    assert outcome.skipped_delivery and len(box.calls) == calls  # nothing fetched
    skipped = of(engine, ev.DeliverySkipped)
    assert [(s.delivery_id, s.reason) for s in skipped] == [("gmail:2", "user_deactivated")]
    assert mailbox(engine).cursor == cursor
    assert "m2" not in {e.message.id for e in of(engine, ev.MessageSynced)}
    worker.catch_up()  # nothing pending for a deactivated user
    command(engine, {"cmd": "ReactivateUser", "user": "mia"})
    worker.catch_up()  # L3: the log says reactivated -> sync from the cursor
    assert "m2" in {e.message.id for e in of(engine, ev.MessageSynced)}
    assert mailbox(engine).cursor == str(len(box.history))


def test_l4_gone_mailbox_is_reported_and_keeps_its_history_through_reactivation() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1), message(2))
    worker.handle(gmail_delivery(1))
    command(engine, {"cmd": "DeactivateUser", "user": "mia"})
    box.gone = True
    command(engine, {"cmd": "ReactivateUser", "user": "mia"})
    outcomes = worker.catch_up()
    assert any(o.gone for o in outcomes)
    assert mailbox(engine).status == "gone"
    assert mailbox(engine).stored == 2
    assert not of(engine, ev.MessageDeletedAtProvider) and not of(engine, ev.MessageDeletionHeld)


def test_s10_reconnection_catches_up_from_the_cursor() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1))
    worker.handle(gmail_delivery(1))
    command(engine, {"cmd": "DisconnectMailbox", "mailbox": "mia-gmail"})
    box.add(message(2))
    assert worker.handle(gmail_delivery(2)).skipped_delivery
    command(engine, {"cmd": "ReconnectMailbox", "mailbox": "mia-gmail"})
    worker.catch_up()
    assert {e.message.id for e in of(engine, ev.MessageSynced)} == {"m1", "m2"}


def test_first_sync_follows_mailbox_connected_in_the_log() -> None:
    engine, sources, worker = setup()
    sources.box(ADDRESS).add(message(1))
    worker.catch_up()
    assert [e.message.id for e in of(engine, ev.MessageSynced)] == ["m1"]
    assert worker.catch_up() == []  # the cursor moved: nothing pending any more


def test_unknown_mailbox_is_acknowledged_not_retried() -> None:
    _, _, worker = setup()
    queue = FakeWorkQueue()
    asyncio.run(queue.publish("gmail", "gmail:9", gmail_delivery(9, "nobody@x.test").payload))

    async def once() -> str:
        (delivery,) = await queue.fetch(1, 0)
        return await process(worker, queue, delivery, LoopOptions())

    assert asyncio.run(once()) == "done"
    assert queue.acked == ["gmail:9"] and not queue.items


def test_stored_bytes_that_are_no_delivery_are_dead_lettered_at_the_first_attempt() -> None:
    _, _, worker = setup()
    queue = FakeWorkQueue()
    asyncio.run(queue.publish("gmail", "gmail:7", b'{"delivery_id": "gmail:7"}'))

    async def once() -> str:
        (delivery,) = await queue.fetch(1, 0)
        return await process(worker, queue, delivery, LoopOptions(max_attempts=5))

    assert asyncio.run(once()) == "dead"
    (dead,) = asyncio.run(queue.dead_letters())
    assert dead.attempts == 1 and dead.mailbox is None
    assert "MalformedWebhook" in dead.error and "subscription" in dead.error
    assert queue.acked == ["gmail:7"]


def test_missing_credentials_sync_nothing() -> None:
    engine, sources, worker = setup()
    sources.without_credentials.add(ADDRESS)
    sources.box(ADDRESS).add(message(1))
    assert worker.handle(gmail_delivery(1)).note == "credentials_missing"
    assert not of(engine, ev.MessageSynced)


def test_failures_are_retried_with_backoff_then_dead_lettered_and_recorded() -> None:
    engine, sources, worker = setup()
    box = sources.box(ADDRESS)
    box.add(message(1))
    box.failures = 100
    queue = FakeWorkQueue()
    options = LoopOptions(max_attempts=3, backoff=0.01)
    asyncio.run(queue.publish("gmail", "gmail:1", gmail_delivery(1).payload))

    async def drive() -> list[str]:
        results = []
        while queue.items:
            for delivery in await queue.fetch(10, 1.0):
                results.append(await process(worker, queue, delivery, options))
        return results

    assert asyncio.run(drive()) == ["retry", "retry", "dead"]
    (dead,) = asyncio.run(queue.dead_letters())
    assert dead.attempts == 3 and dead.mailbox == "mia-gmail" and "fake outage" in dead.error
    (recorded,) = of(engine, ev.DeliveryDeadLettered)
    assert (recorded.dead_letter_id, recorded.delivery_id, recorded.attempts) == (
        dead.id, "gmail:1", 3)
    assert recorded.mailbox_id == "mia-gmail"
    # recording the same dead letter again (a crash before the ack) changes nothing
    worker.record_dead_letter(gmail_delivery(1, attempts=3), dead.id, "again")
    assert len(of(engine, ev.DeliveryDeadLettered)) == 1
    # replayed once the provider is back: synced
    box.failures = 0
    asyncio.run(queue.replay(dead.id))
    assert asyncio.run(drive()) == ["done"]
    assert [e.message.id for e in of(engine, ev.MessageSynced)] == ["m1"]


def graph_change(resource: str) -> GraphChange:
    return GraphChange(delivery_id="graph:1", subscription_id="sub-1", client_state_ok=True,
                       change_type="created", resource=resource, resource_id="AAk=")


def test_graph_resource_names_the_mailbox() -> None:
    assert delivery_address(graph_change("Users/Mia@Acme.test/Messages/AAk=")) == "mia@acme.test"
    assert delivery_address(graph_change("users('mia@acme.test')/messages/1")) == "mia@acme.test"
    with pytest.raises(Unroutable):
        delivery_address(graph_change("subscriptions/1"))


def test_two_tenants_with_one_address_both_sync() -> None:
    engine, sources, worker = setup()
    report = engine.apply_lines([json.dumps({"tenant": "other", **x}) for x in [
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "m2", "user": "mia", "provider": "gmail",
         "address": ADDRESS}]])
    assert not report.rejected
    sources.box(ADDRESS).add(message(1))
    outcome = worker.handle(gmail_delivery(1))
    assert outcome.mailboxes == [MailboxRef("acme", "mia-gmail"), MailboxRef("other", "m2")]


@pytest.mark.parametrize("batch", [1, 1000])
def test_batch_size_does_not_change_the_result(batch: int) -> None:
    engine, sources, worker = setup()
    worker.batch_size = batch
    sources.box(ADDRESS).add(*(message(i) for i in range(1, 8)))
    worker.handle(gmail_delivery(1))
    assert len(of(engine, ev.MessageSynced)) == 7


class RecordingQueue(FakeWorkQueue):
    """Remembers retry delays; its first fetch fails like a NATS outage."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        super().__init__()
        self.delays: list[float] = []
        self.outages = 1
        self.stop = stop

    async def retry(self, delivery: Delivery, delay: float) -> None:
        self.delays.append(delay)
        await super().retry(delivery, delay)

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        if self.outages:
            self.outages -= 1
            raise DeliveryStoreError("NATS is down")
        return await super().fetch(limit, timeout)

    async def ack(self, delivery: Delivery) -> None:
        await super().ack(delivery)
        if self.stop is not None:
            self.stop.set()


def test_a_throttled_provider_is_not_asked_again_before_its_retry_after() -> None:
    _, sources, worker = setup()
    sources.box(ADDRESS).throttled = 42.0
    queue = RecordingQueue()
    queue.outages = 0
    asyncio.run(queue.publish("gmail", "gmail:1", gmail_delivery(1).payload))

    async def once() -> str:
        (delivery,) = await queue.fetch(1, 0)
        return await process(worker, queue, delivery, LoopOptions(backoff=0.5))

    assert asyncio.run(once()) == "retry"
    assert queue.delays == [42.0]


def test_the_loop_survives_a_queue_outage_and_goes_on() -> None:
    engine, sources, worker = setup()
    sources.box(ADDRESS).add(message(1))
    stop = threading.Event()
    queue = RecordingQueue(stop)
    asyncio.run(queue.publish("gmail", "gmail:1", gmail_delivery(1).payload))
    asyncio.run(run(worker, queue, stop, LoopOptions(poll=0.05, imap_interval=3600)))
    assert queue.acked == ["gmail:1"] and queue.outages == 0
    assert [e.message.id for e in of(engine, ev.MessageSynced)] == ["m1"]
