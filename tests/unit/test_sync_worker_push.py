"""Push channels in the sync worker (issue #4): Graph subscriptions and Gmail watches created and
renewed on the periodic tick (a fake clock), Graph lifecycle notifications routed by their
subscription id (missed, reauthorizationRequired, subscriptionRemoved), and credentials that
cannot be renewed failing a delivery at once. In-memory engine, hand-written fake providers."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta
from typing import Any

import orjson
from structlog.testing import capture_logs
from sync_fakes import NOW, FakeSources, FakeWorkQueue, message

from adapters.deliveries.model import GraphChange, GraphLifecycle, encode
from adapters.deliveries.webhooks import graph_delivery_id
from adapters.deliveries.work_queue import Delivery
from domain import events as ev
from runners.entrypoints.sync_loop import LoopOptions, process, run
from runners.services.engine import Engine
from runners.services.push_channels import PushSettings
from runners.services.sync_worker import SyncWorker

TENANT = "acme"
ADDRESS = "mia@acme.test"
SETTINGS = PushSettings(public_url="https://crm.example/", client_state="s3cret-client-state",
                        gmail_topic="projects/crm/topics/gmail",
                        graph_lifetime=timedelta(days=3))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def setup(provider: str = "outlook", scope: dict[str, Any] | None = None
          ) -> tuple[Engine, FakeSources, SyncWorker, Clock]:
    engine = Engine.open_in_memory()
    connect: dict[str, Any] = {"cmd": "ConnectMailbox", "mailbox": "mbx", "user": "mia",
                               "provider": provider, "address": ADDRESS,
                               "credentials": {"access_token": "tok"}}
    if scope is not None:
        connect["scope"] = scope
    lines = [{"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"}, connect]
    report = engine.apply_lines([json.dumps({"tenant": TENANT, "at": NOW.isoformat(), **x})
                                 for x in lines])
    assert not report.rejected, report.rejected
    clock = Clock()
    sources = FakeSources()
    worker = SyncWorker(engine, sources, batch_size=50, clock=clock, push=SETTINGS)
    return engine, sources, worker, clock


def command(engine: Engine, clock: Clock, cmd: dict[str, Any]) -> None:
    report = engine.apply_lines([json.dumps({"tenant": TENANT, "at": clock.now.isoformat(),
                                             **cmd})], now=clock.now)  # E6: the test's clock
    assert not report.rejected, report.rejected


def of(engine: Engine, cls: type[Any]) -> list[Any]:
    return [e for _, e in engine.events(TENANT) if isinstance(e, cls)]


def push_of(engine: Engine) -> Any:
    return engine.state(TENANT).mailboxes["mbx"].push


def lifecycle(subscription: str, event: str, n: int = 1) -> Delivery:
    """A lifecycle notification as the receiver stores it."""
    item = GraphLifecycle(delivery_id=graph_delivery_id("lifecycle", subscription, event, str(n)),
                          subscription_id=subscription, client_state_ok=True,
                          lifecycle_event=event)  # type: ignore[arg-type]
    return Delivery("graph", item.delivery_id, encode(item), 1)


def change(subscription: str, resource: str) -> Delivery:
    item = GraphChange(delivery_id=graph_delivery_id("change", subscription, resource),
                       subscription_id=subscription, client_state_ok=True, change_type="created",
                       resource=resource, resource_id="AAk=")
    return Delivery("graph", item.delivery_id, encode(item), 1)


def synced(engine: Engine) -> set[str]:
    return {e.message.id for e in of(engine, ev.MessageSynced)}


def test_the_tick_creates_a_subscription_for_a_connected_mailbox_and_records_it() -> None:
    engine, sources, worker, _ = setup()
    sources.box(ADDRESS).add(message(1))
    worker.catch_up()  # first sync
    calls_before = len(sources.box(ADDRESS).calls)
    (outcome,) = worker.maintain_push()
    assert outcome.push == "created"
    (created,) = of(engine, ev.PushSubscriptionCreated)
    assert (created.subscription_id, created.reason, created.replaces) == ("sub-1", "missing",
                                                                          None)
    assert created.expires_at == NOW + timedelta(days=3)
    assert created.resource == f"/users/{ADDRESS}/messages"
    target = sources.push(ADDRESS).targets[0]
    assert target.notification_url == "https://crm.example/webhooks/graph"
    assert target.client_state == "s3cret-client-state"
    # the mailbox had a cursor: it catches up on what arrived while it had no subscription
    assert sources.box(ADDRESS).calls[calls_before:] == ["subscribe", "changes"]
    assert worker.maintain_push() == []  # nothing due now
    # the clientState never enters an event
    assert all("s3cret" not in e.model_dump_json() for _, e in engine.events(TENANT))


def test_missed_lifecycle_notification_catches_up_from_the_cursor() -> None:
    engine, sources, worker, _ = setup()
    box = sources.box(ADDRESS)
    box.add(message(1))
    worker.catch_up()
    worker.maintain_push()
    box.add(message(2), message(3))  # their notifications were missed
    outcome = worker.handle(lifecycle("sub-1", "missed"))
    assert outcome.synced == 2 and synced(engine) == {"m1", "m2", "m3"}
    assert not outcome.resynced  # a delta from the stored cursor, not a backfill
    assert engine.state(TENANT).mailboxes["mbx"].cursor == str(len(box.history))
    assert of(engine, ev.MailboxCursorAdvanced)[-1].delivery_id == \
        lifecycle("sub-1", "missed").delivery_id


def test_subscription_removed_creates_a_new_subscription_and_catches_up() -> None:
    engine, sources, worker, _ = setup()
    box = sources.box(ADDRESS)
    worker.catch_up()
    worker.maintain_push()
    box.add(message(5))
    sources.push(ADDRESS).live.pop("sub-1")  # Graph removed it
    outcome = worker.handle(lifecycle("sub-1", "subscriptionRemoved"))
    assert outcome.push == "created" and "m5" in synced(engine)
    (ended,) = of(engine, ev.PushSubscriptionEnded)
    assert (ended.subscription_id, ended.reason) == ("sub-1", "removed_by_provider")
    newest = of(engine, ev.PushSubscriptionCreated)[-1]
    assert (newest.subscription_id, newest.reason, newest.replaces) == (
        "sub-2", "subscription_removed", None)
    assert push_of(engine).subscription_id == "sub-2"
    # the old id still routes to the mailbox, but a second removal of it changes nothing
    again = worker.handle(lifecycle("sub-1", "subscriptionRemoved", n=2))
    assert again.note == "stale_subscription" and len(of(engine, ev.PushSubscriptionCreated)) == 2


def test_reauthorization_required_renews_the_subscription() -> None:
    engine, sources, worker, clock = setup()
    worker.catch_up()
    worker.maintain_push()
    clock.now += timedelta(hours=2)
    outcome = worker.handle(lifecycle("sub-1", "reauthorizationRequired"))
    assert outcome.push == "renewed"
    (renewed,) = of(engine, ev.PushSubscriptionRenewed)
    assert (renewed.subscription_id, renewed.reason) == ("sub-1", "reauthorization_required")
    assert renewed.expires_at == clock.now + timedelta(days=3)
    assert ("renew", ADDRESS, "sub-1") in sources.push(ADDRESS).calls
    assert push_of(engine).renewed_at == clock.now


def test_unknown_subscription_id_is_logged_and_acknowledged_like_an_unknown_mailbox() -> None:
    engine, _, worker, _ = setup()
    queue = FakeWorkQueue()
    delivery = lifecycle("nobody-knows-me", "missed")
    asyncio.run(queue.publish("graph", delivery.delivery_id, delivery.payload))
    seq = engine.state(TENANT).seq

    async def once() -> str:
        (fetched,) = await queue.fetch(1, 0)
        return await process(worker, queue, fetched, LoopOptions())

    with capture_logs() as logs:
        assert asyncio.run(once()) == "done"
    assert queue.acked == [delivery.delivery_id]
    assert [(x["event"], x["subscription_id"]) for x in logs
            if x["event"] == "delivery_unknown_subscription"] == [
        ("delivery_unknown_subscription", "nobody-knows-me")]
    assert engine.state(TENANT).seq == seq  # recorded in no tenant


def test_renewal_on_the_tick_follows_the_clock() -> None:
    engine, sources, worker, clock = setup()
    worker.catch_up()
    worker.maintain_push()
    clock.now += timedelta(hours=35)  # less than half of 3 days: nothing yet
    assert worker.maintain_push() == []
    clock.now += timedelta(hours=2)  # past half its lifetime: renewed
    (outcome,) = worker.maintain_push()
    assert outcome.push == "renewed"
    (renewed,) = of(engine, ev.PushSubscriptionRenewed)
    assert renewed.reason == "expiring" and renewed.expires_at == clock.now + timedelta(days=3)
    # Graph forgot the subscription: the renewal is refused and a new one is made
    sources.push(ADDRESS).dropped.add("sub-1")
    clock.now += timedelta(days=2)
    (outcome,) = worker.maintain_push()
    newest = of(engine, ev.PushSubscriptionCreated)[-1]
    assert (newest.subscription_id, newest.reason, newest.replaces) == (
        "sub-2", "renewal_refused", "sub-1")
    # the worker was down past the expiry: a new subscription, then a catch-up
    sources.box(ADDRESS).add(message(7))
    clock.now += timedelta(days=4)
    (outcome,) = worker.maintain_push()
    newest = of(engine, ev.PushSubscriptionCreated)[-1]
    assert (newest.subscription_id, newest.reason) == ("sub-3", "expired")
    assert "m7" in synced(engine)


def test_l1_no_push_channel_while_the_user_is_deactivated_and_one_after_reactivation() -> None:
    engine, _, worker, clock = setup()
    worker.catch_up()
    worker.maintain_push()
    command(engine, clock, {"cmd": "DeactivateUser", "user": "mia"})
    clock.now += timedelta(days=5)  # expired meanwhile: nothing is renewed or created
    assert worker.maintain_push() == []
    missed = worker.handle(lifecycle("sub-1", "missed"))
    assert missed.skipped_delivery  # L1: recorded as skipped, not fetched
    removed = worker.handle(lifecycle("sub-1", "subscriptionRemoved"))
    assert removed.note == "push_paused: user_deactivated"
    assert push_of(engine) is None and len(of(engine, ev.PushSubscriptionCreated)) == 1
    command(engine, clock, {"cmd": "ReactivateUser", "user": "mia"})
    worker.catch_up()
    (outcome,) = worker.maintain_push()
    assert outcome.push == "created" and push_of(engine).subscription_id == "sub-2"


def test_s9_an_address_change_moves_the_subscription_to_the_new_address() -> None:
    engine, sources, worker, clock = setup()
    worker.catch_up()
    worker.maintain_push()
    clock.now += timedelta(minutes=5)
    command(engine, clock, {"cmd": "ChangeMailboxAddress", "mailbox": "mbx",
                            "address": "mia.new@acme.test"})
    (outcome,) = worker.maintain_push()
    assert outcome.push == "created"
    newest = of(engine, ev.PushSubscriptionCreated)[-1]
    assert (newest.reason, newest.replaces) == ("address_changed", "sub-1")
    assert newest.resource == "/users/mia.new@acme.test/messages"
    assert ("unsubscribe", ADDRESS, "sub-1") in sources.pushes["mia.new@acme.test"].calls


def test_change_notifications_are_routed_by_their_subscription_id() -> None:
    engine, sources, worker, _ = setup()
    worker.catch_up()
    worker.maintain_push()
    sources.box(ADDRESS).add(message(9))
    # Graph may name the user by id rather than address: the subscription id still routes it
    outcome = worker.handle(change("sub-1", "Users/6f1a-guid/Messages/AAk="))
    assert outcome.synced == 1 and "m9" in synced(engine)
    assert worker.handle(change("sub-x", "Users/6f1a-guid/Messages/AAk=")).note == \
        "unknown_mailbox"


def test_gmail_watch_filters_on_the_scope_labels_and_uses_its_history_id() -> None:
    engine, sources, worker, _ = setup("gmail", {"mode": "labels", "labels": ["Label_7"]})
    box = sources.box(ADDRESS)
    box.add(message(1, labels=["Label_7"]))
    worker.catch_up()
    calls = len(box.calls)
    (outcome,) = worker.maintain_push()
    assert outcome.push == "created" and not outcome.synced
    (created,) = of(engine, ev.PushSubscriptionCreated)
    assert created.subscription_id is None and "projects/crm/topics/gmail" in created.resource
    target = sources.push(ADDRESS, gmail=True).targets[0]
    assert target.topic == "projects/crm/topics/gmail" and target.labels == ("Label_7",)
    # the watch started at the history id the cursor already has: no catch-up
    assert box.calls[calls:] == ["subscribe"]
    assert created.expires_at == NOW + timedelta(days=7)


def test_credentials_that_cannot_be_renewed_fail_the_delivery_at_once_with_the_reason() -> None:
    engine, sources, worker, _ = setup("gmail")
    worker.catch_up()
    sources.box(ADDRESS).rejected = True
    queue = FakeWorkQueue()
    payload = orjson.dumps({"delivery_id": "gmail:1", "subscription": "s",
                            "email_address": ADDRESS, "history_id": 1})
    asyncio.run(queue.publish("gmail", "gmail:1", payload))

    async def once() -> str:
        (fetched,) = await queue.fetch(1, 0)
        return await process(worker, queue, fetched, LoopOptions(max_attempts=5))

    assert asyncio.run(once()) == "dead"  # the first attempt: retrying cannot help
    (recorded,) = of(engine, ev.DeliveryDeadLettered)
    assert recorded.attempts == 1 and "reconnect the mailbox" in recorded.error
    assert "invalid_grant" in recorded.error


def test_the_loop_runs_the_push_tick() -> None:
    engine, _, worker, _ = setup()
    stop = threading.Event()
    queue = FakeWorkQueue()

    async def main() -> None:
        task = asyncio.create_task(run(worker, queue, stop, LoopOptions(
            poll=0.02, imap_interval=3600, push_interval=0.01)))
        for _ in range(200):
            if of(engine, ev.PushSubscriptionCreated):
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert [e.reason for e in of(engine, ev.PushSubscriptionCreated)] == ["missing"]


def test_push_settings_need_their_parts_and_stay_within_graphs_limit() -> None:
    import pytest

    only_url = PushSettings(public_url="https://crm.example")
    assert only_url.providers == []  # Graph also needs the clientState the receiver checks
    assert PushSettings(gmail_topic="projects/p/topics/t").providers == ["gmail"]
    assert SETTINGS.providers == ["gmail", "outlook"]
    assert "s3cret" not in repr(SETTINGS)
    with pytest.raises(ValueError, match="Graph's limit"):
        PushSettings(graph_lifetime=timedelta(days=8))
