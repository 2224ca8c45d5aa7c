"""Restarts heal themselves (issue #10 point 10), without I/O: the capped backoff, the projection
runner outliving a store outage, and the sync loop giving deliveries back (NAK) and settling the
acks a queue outage kept it from sending, instead of leaving them to the ack wait."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

import pytest
from eventsourcing.persistence import OperationalError
from psycopg_pool import PoolTimeout
from sync_fakes import FakeSources, FakeWorkQueue, message

from adapters.deliveries.work_queue import Delivery
from adapters.errors import DeliveryStoreError, StoreError
from adapters.eventstore.recorder_postgres import bounded
from adapters.eventstore.store import EventStore, LoggedEvent, postgres_defaults
from adapters.tracking.outbox import MemoryOutboxTracking
from domain import events as ev
from domain.commands import parse_command
from domain.errors import Rejection
from runners.entrypoints import projection_runner
from runners.entrypoints.contacts_runner import run_contacts
from runners.entrypoints.sync_loop import LoopOptions, Owed, process, run
from runners.services import outbox
from runners.services.backoff import Backoff, keep_trying
from runners.services.engine import Engine
from runners.services.sync_common import Outcome
from runners.services.sync_worker import SyncWorker

TENANT, ADDRESS = "acme", "mia@acme.test"


# -- the backoff ------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    low = Backoff(base=1.0, cap=8.0, jitter=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high = Backoff(base=1.0, cap=8.0, jitter=lambda: 1.0)
    assert [high.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    high.reset()
    assert (high.failures, high.next_delay()) == (0, 1.0)
    assert Backoff(failures=10_000).next_delay() <= 5.0  # no overflow, still capped


def test_keep_trying_backs_off_between_outages_until_it_works() -> None:
    slept: list[float] = []
    calls = [0]

    def open_store() -> str:
        calls[0] += 1
        if calls[0] <= 3:
            raise StoreError("connection refused")
        return "open"

    result = keep_trying(open_store, what="open", stop=threading.Event(),
                         backoff=Backoff(base=1.0, cap=10.0, jitter=lambda: 0.0),
                         sleep=slept.append)
    assert (result, calls[0], slept) == ("open", 4, [0.5, 1.0, 2.0])


def test_keep_trying_ends_when_stopped_and_does_not_swallow_bugs() -> None:
    stop = threading.Event()

    def down() -> None:
        stop.set()  # SIGTERM during the outage
        raise DeliveryStoreError("nats down")

    assert keep_trying(down, what="open", stop=stop, sleep=lambda _: None) is None
    try:
        keep_trying(lambda: 1 / 0, what="open", stop=threading.Event(), sleep=lambda _: None)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("a bug must end the runner")


# -- the projection runner --------------------------------------------------------------------
class FlakyLog:
    """The event store, failing its next `failures` log reads like PostgreSQL restarting."""

    def __init__(self, store: EventStore, failures: int) -> None:
        self.store, self.failures = store, failures
        self.snapshots = None

    def _outage(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("cannot read the event log: server closed the connection")

    def max_position(self) -> int:
        self._outage()
        return self.store.max_position()

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        self._outage()
        return self.store.read_log(after, limit)


class StopWhenCaughtUp:
    """The runner's waiter: stops the runner once the views hold every event."""

    def __init__(self, engine: Engine, store: EventStore, stop: threading.Event) -> None:
        self.engine, self.store, self.stop = engine, store, stop
        self.waits = 0

    def wait(self, timeout: float) -> bool:
        self.waits += 1
        if min(self.engine.positions().values()) >= self.store.max_position():
            self.stop.set()
        return False

    def close(self) -> None:
        pass


def users(engine: Engine, n: int) -> None:
    report = engine.apply_lines([json.dumps({"tenant": TENANT, "cmd": "AddUser", "user": f"u{i}",
                                             "email": f"u{i}@acme.test", "role": "member"})
                                 for i in range(n)])
    assert not report.rejected and report.applied == n


def test_projection_runner_outlives_a_store_outage_and_catches_up() -> None:
    seeded = Engine.open_in_memory()
    seeded.follow = False
    users(seeded, 7)
    real, views = seeded.stores()
    engine = Engine(cast(EventStore, FlakyLog(real, failures=4)), views)  # the same stores
    engine.follow = False
    stop, slept = threading.Event(), []
    waiter = StopWhenCaughtUp(engine, real, stop)
    projection_runner.run(engine, waiter, stop=stop, batch_size=3,
                          backoff=Backoff(base=1.0, cap=3.0, jitter=lambda: 1.0),
                          sleep=slept.append)
    assert slept == [1.0, 2.0, 3.0, 3.0]  # backed off through the outage, capped
    positions = engine.positions()
    assert set(positions.values()) == {real.max_position()} and real.max_position() == 7
    checks = seeded.verify()  # the views equal a rebuild from the log: nothing lost or doubled
    assert checks and all(live == rebuilt for live, rebuilt in checks.values())


def test_projection_runner_still_ends_on_a_bug() -> None:
    seeded = Engine.open_in_memory()
    users(seeded, 1)

    class Broken(FlakyLog):
        def max_position(self) -> int:
            raise RuntimeError("a bug")

    store, views = seeded.stores()
    broken = cast(EventStore, Broken(store, 0))
    engine = Engine(broken, views)
    stop = threading.Event()
    try:
        projection_runner.run(engine, StopWhenCaughtUp(engine, broken, stop), stop=stop,
                              sleep=lambda _: None)
    except RuntimeError as exc:
        assert str(exc) == "a bug"
    else:
        raise AssertionError("a bug must not be retried forever")


# -- the sync loop: give deliveries back, settle owed acks -------------------------------------
def setup() -> tuple[Engine, FakeSources]:
    engine = Engine.open_in_memory()
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **c}) for c in [
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": ADDRESS, "backfill_days": 30}]])
    assert not report.rejected
    return engine, FakeSources()


def delivery_payload(n: int) -> bytes:
    return json.dumps({"delivery_id": f"gmail:{n}", "subscription": "s",
                       "email_address": ADDRESS, "history_id": n}).encode()


class StoreDownWorker(SyncWorker):
    """A worker whose store fails its next `down` deliveries (PostgreSQL restarting)."""

    down = 0

    def handle(self, delivery: Delivery) -> Outcome:
        if self.down:
            self.down -= 1
            raise StoreError("cannot append to tenant 'acme': connection refused")
        return super().handle(delivery)


class Queue(FakeWorkQueue):
    """Records give-backs; its next `ack_failures` acks fail like NATS restarting; `stop` is
    set after `stop_after` acks."""

    def __init__(self, stop: threading.Event | None = None, stop_after: int = 1) -> None:
        super().__init__()
        self.given_back: list[tuple[str, float]] = []
        self.ack_failures = 0
        self.stop, self.stop_after = stop, stop_after

    async def retry(self, delivery: Delivery, delay: float) -> None:
        self.given_back.append((delivery.delivery_id, delay))
        await super().retry(delivery, delay)

    async def ack(self, delivery: Delivery) -> None:
        if self.ack_failures:
            self.ack_failures -= 1
            raise DeliveryStoreError("JetStream ack: nats: timeout")
        await super().ack(delivery)
        if self.stop is not None and len(self.acked) >= self.stop_after:
            self.stop.set()


def synced(engine: Engine) -> list[str]:
    return [e.message.id for _, e in engine.events(TENANT)
            if isinstance(e, ev.MessageSynced)]


def test_a_store_outage_gives_the_delivery_back_at_once_and_never_dead_letters_it() -> None:
    engine, sources = setup()
    sources.box(ADDRESS).add(message(1))
    worker = StoreDownWorker(engine, sources, batch_size=3)
    worker.down = 1
    queue = Queue()
    asyncio.run(queue.publish("gmail", "gmail:1", delivery_payload(1)))
    options = LoopOptions(max_attempts=1, outage_delay=0.5)  # one attempt: no retry left

    async def once() -> str:
        (delivery,) = await queue.fetch(1, 0)
        return await process(worker, queue, delivery, options)

    assert asyncio.run(once()) == "outage"
    assert queue.given_back == [("gmail:1", 0.5)] and not queue.dead and not queue.acked
    assert asyncio.run(queue.dead_letters()) == []
    queue.items["gmail:1"] = (*queue.items["gmail:1"][:3], 0.0)  # the delay has passed
    assert asyncio.run(once()) == "done"
    assert queue.acked == ["gmail:1"] and synced(engine) == ["m1"]


def test_an_ack_lost_to_a_queue_outage_is_sent_when_the_queue_is_back() -> None:
    engine, sources = setup()
    sources.box(ADDRESS).add(message(1))
    worker = SyncWorker(engine, sources, batch_size=3)
    stop = threading.Event()
    queue = Queue(stop)
    queue.ack_failures = 2  # the ack after handling, and the first try to settle it
    asyncio.run(queue.publish("gmail", "gmail:1", delivery_payload(1)))
    asyncio.run(run(worker, queue, stop, LoopOptions(poll=0.01, imap_interval=3600),
                    Backoff(base=0.01, cap=0.02)))
    # acked, not left in flight until the ack wait; handled once, not again
    assert queue.acked == ["gmail:1"] and not queue.items
    assert synced(engine) == ["m1"] and not queue.given_back


def test_fetched_deliveries_not_handled_go_back_at_once() -> None:
    engine, sources = setup()
    sources.box(ADDRESS).add(message(1))
    worker = SyncWorker(engine, sources, batch_size=3)
    stop = threading.Event()
    queue = Queue(stop, stop_after=1)  # SIGTERM after the first of three fetched deliveries
    for n in (1, 2, 3):
        asyncio.run(queue.publish("gmail", f"gmail:{n}", delivery_payload(n)))
    asyncio.run(run(worker, queue, stop, LoopOptions(poll=0.01, imap_interval=3600)))
    assert queue.acked == ["gmail:1"]
    assert queue.given_back == [("gmail:2", 0.0), ("gmail:3", 0.0)]
    redelivered: list[Any] = asyncio.run(queue.fetch(10, 0))  # due now, not after an ack wait
    assert sorted(d.delivery_id for d in redelivered) == ["gmail:2", "gmail:3"]


# -- the outbox ---------------------------------------------------------------------------------
class FlakyTracking(MemoryOutboxTracking):
    """Its lock cannot be taken `failures` times (PostgreSQL down); counts the sessions."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures, self.sessions = failures, 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self.failures:
            self.failures -= 1
            raise StoreError("outbox lock (PostgreSQL): connection refused")
        self.sessions += 1
        yield


class StopAfterWaits:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def wait(self, timeout: float) -> bool:
        self.stop.set()
        return False

    def close(self) -> None:
        pass


def test_the_outbox_takes_its_lock_again_after_an_outage_and_resumes_from_the_watermark(
        ) -> None:
    engine = Engine.open_in_memory()
    users(engine, 2)
    tracking = FlakyTracking(failures=3)
    tracking.saved = 1  # the durable watermark
    worker = outbox.Outbox(engine, tracking, lambda *_: cast(Any, None))
    worker.position = 99  # in-memory state of a session that ended in the outage
    stop, slept = threading.Event(), []
    outbox.run(worker, StopAfterWaits(stop), stop=stop, sleep=slept.append,
               backoff=Backoff(base=1.0, cap=10.0, jitter=lambda: 0.0))
    assert slept == [0.5, 1.0, 2.0] and tracking.sessions == 1
    assert worker.position == engine.head() == 2  # read on from the watermark


# -- bounded PostgreSQL recorder calls ------------------------------------------------------------
class Recorder:
    """Stands in for the recorder: its `read` fails with the errors in `failures`, in order."""

    def __init__(self, *failures: Exception) -> None:
        self.failures, self.calls = list(failures), 0
        self.unavailable_until = 0.0

    @bounded
    def read(self, value: int) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return value


def pool_timeout() -> OperationalError:
    error = OperationalError("couldn't get a connection after 2.00 sec")
    error.__cause__ = PoolTimeout("couldn't get a connection after 2.00 sec")
    return error


def test_a_broken_connection_is_tried_once_more_then_fails() -> None:
    once = Recorder(OperationalError("server closed the connection unexpectedly"))
    assert (once.read(7), once.calls) == (7, 2)
    twice = Recorder(*(OperationalError("server closed the connection") for _ in range(2)))
    with pytest.raises(OperationalError):
        twice.read(7)
    assert twice.calls == 2 and twice.unavailable_until == 0.0  # library retried 10 times


def test_a_pool_timeout_is_not_retried_and_the_next_calls_fail_at_once() -> None:
    down = Recorder(pool_timeout())
    with pytest.raises(OperationalError):
        down.read(1)
    assert down.calls == 1 and down.unavailable_until > 0.0
    down.unavailable_until = float("inf")  # within the fail-fast window
    with pytest.raises(OperationalError, match="unavailable"):
        down.read(1)
    assert down.calls == 1  # not waited for again
    down.unavailable_until = 0.0  # the window has passed: tried again, and the store is back
    assert (down.read(3), down.calls) == (3, 2)


def test_postgres_event_store_defaults_leave_explicit_settings_alone() -> None:
    env = postgres_defaults({"PERSISTENCE_MODULE": "eventsourcing.postgres",
                             "POSTGRES_CONNECT_TIMEOUT": "9"})
    assert env["POSTGRES_CONNECT_TIMEOUT"] == "9" and env["POSTGRES_PRE_PING"] == "y"
    assert env["APPLICATION_RECORDER_TOPIC"].endswith("BoundedPostgresRecorder")
    assert postgres_defaults({"PERSISTENCE_MODULE": "eventsourcing.sqlite"}) == {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite"}


# -- E6: a writer that waited (on the store, or behind another process) is not rejected for time
def test_e6_a_command_without_at_read_its_clock_before_the_latest_event_is_applied() -> None:
    engine = Engine.open_in_memory()
    users(engine, 1)
    latest = engine.state(TENANT).last_at
    assert latest is not None
    earlier = latest - timedelta(seconds=3)  # `now` read before another writer appended
    command = parse_command(json.dumps({"tenant": TENANT, "cmd": "AddUser", "user": "late",
                                        "email": "late@acme.test", "role": "member"}))
    (added,) = engine.execute(command, now=earlier, correlation_id="c")
    assert isinstance(added, ev.UserAdded) and added.occurred_at == latest
    batch = parse_command(json.dumps({"tenant": TENANT, "cmd": "AddUser", "user": "later",
                                      "email": "later@acme.test", "role": "member"}))
    ((batched,),) = engine.execute_batch([batch], now=earlier, correlation_id="c")
    assert isinstance(batched, ev.UserAdded)  # a sync worker's batch: stored, not rejected
    explicit = parse_command(json.dumps({"tenant": TENANT, "cmd": "AddUser", "user": "x",
                                         "email": "x@acme.test", "role": "member",
                                         "at": earlier.isoformat()}))
    with pytest.raises(Rejection):  # an explicit `at` before the latest event still is (E6)
        engine.execute(explicit, now=latest, correlation_id="c")


# -- contact sync ---------------------------------------------------------------------------------
class CountingLog(FlakyLog):
    reads = 0

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        found = super().read_log(after, limit)
        self.reads += 1
        return found


class TermWhenIdle:
    """`run contacts`'s waiter: the first idle wait sends SIGTERM to this process (the runner's
    own handler stops it)."""

    def wait(self, timeout: float) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        return False

    def close(self) -> None:
        pass


def test_contact_sync_outlives_a_store_outage() -> None:
    seeded = Engine.open_in_memory()
    users(seeded, 2)
    store, views = seeded.stores()
    flaky = CountingLog(store, failures=2)
    engine = Engine(cast(EventStore, flaky), views)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert run_contacts(engine, None, TermWhenIdle(), interval=3600, poll=0.01,
                            once=False) == 0
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert flaky.failures == 0 and flaky.reads >= 2  # through the outage, then the whole log


def test_an_ack_the_queue_keeps_refusing_is_dropped_after_its_tries_not_owed_forever() -> None:
    queue = Queue()
    queue.ack_failures = 1000  # e.g. a message the server will never confirm again
    asyncio.run(queue.publish("gmail", "gmail:1", delivery_payload(1)))
    owed = Owed()

    async def drive() -> int:
        (delivery,) = await queue.fetch(1, 0)
        assert not await owed.settle(queue, delivery, "ack")
        refused = 0
        while owed.items:
            try:
                await owed.pay(queue)
            except DeliveryStoreError:
                refused += 1
        return refused

    assert asyncio.run(drive()) == Owed.MAX_TRIES - 1
    assert not owed.items and owed.tries == 0  # the worker goes on; the queue redelivers later
