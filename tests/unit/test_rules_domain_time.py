"""E6: domain time runs forward per tenant without losing commands (issue #10, points 1 and 2).

Pure decisions (decide, permissions) and the engine's retries on an in-memory store that another
writer races: a command without `at` is never rejected for time, an explicit `at` far ahead or
behind is, and only admins and services may send one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sync_fakes import FakeSources, FakeWorkQueue, message

from adapters.deliveries.work_queue import Delivery
from adapters.errors import ConcurrencyConflict, StoreError
from adapters.eventstore.store import EventStore
from adapters.views.memory import MemoryViews
from domain import events as ev
from domain.commands import Command, parse_command
from domain.decide import decide
from domain.errors import Rejection
from domain.permissions import authorise
from domain.state import TenantState, evolve
from runners.entrypoints.sync_loop import LoopOptions, process
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

TENANT = "acme"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ADDRESS = "mia@acme.test"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def cmd(raw: dict[str, Any]) -> Command:
    return parse_command(json.dumps({"tenant": TENANT, **raw}))


def fold(state: TenantState, events: Sequence[ev.DomainEvent]) -> None:
    for event in events:
        evolve(state, event, state.seq + 1)


def tenant(at: datetime) -> TenantState:
    """A tenant whose latest event is at `at`: an admin, a member and a mailbox."""
    state = TenantState(TENANT)
    for raw in ({"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
                {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
                {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
                 "provider": "gmail", "address": ADDRESS}):
        fold(state, decide(state, cmd({**raw, "at": iso(at)}), now=at, correlation_id="setup"))
    return state


def lead(n: int, **extra: Any) -> Command:
    return cmd({"cmd": "CreateLead", "record": f"lead-{n}", "owner": "mia", "name": f"L{n}",
                "emails": [f"l{n}@x.test"], **extra})


# -- decide (pure) ---------------------------------------------------------------------------
def test_e6_command_without_at_behind_the_tenants_latest_event_takes_that_time() -> None:
    state = tenant(T0 + timedelta(hours=1))  # another writer's clock ran ahead of ours
    events = decide(state, lead(1), now=T0, correlation_id="c")
    assert [type(e) for e in events] == [ev.LeadCreated]
    assert events[0].occurred_at == T0 + timedelta(hours=1)
    later = decide(state, lead(2), now=T0 + timedelta(hours=2), correlation_id="c")
    assert later[0].occurred_at == T0 + timedelta(hours=2)  # the wall clock when it is later


def test_e6_explicit_at_more_than_five_minutes_ahead_is_rejected_naming_at() -> None:
    state = tenant(T0)
    with pytest.raises(Rejection) as info:
        decide(state, lead(1, at="2999-01-01T00:00:00Z"), now=T0, correlation_id="c")
    assert info.value.field == "at" and "5 minutes" in info.value.reason
    with pytest.raises(Rejection):
        decide(state, lead(1, at=iso(T0 + timedelta(minutes=5, seconds=1))), now=T0,
               correlation_id="c")
    ok = decide(state, lead(1, at=iso(T0 + timedelta(minutes=5))), now=T0, correlation_id="c")
    assert ok[0].occurred_at == T0 + timedelta(minutes=5)


def test_e6_future_at_on_a_command_with_no_effect_dates_nothing() -> None:
    """A command_id'd no-op would record CommandHadNoEffect: with a far `at` it is refused too,
    so no event ever dates the tenant ahead of the clock."""
    state = tenant(T0)
    fold(state, decide(state, lead(1), now=T0, correlation_id="c"))
    again = cmd({"cmd": "ChangeOwner", "record": "lead-1", "owner": "mia", "command_id": "k1",
                 "at": "2999-01-01T00:00:00Z"})
    with pytest.raises(Rejection) as info:
        decide(state, again, now=T0, correlation_id="c")
    assert info.value.field == "at"


def test_e6_explicit_at_before_the_latest_event_stays_a_clear_rejection() -> None:
    state = tenant(T0 + timedelta(hours=1))
    with pytest.raises(Rejection) as info:
        decide(state, lead(1, at=iso(T0)), now=T0 + timedelta(hours=1), correlation_id="c")
    assert info.value.field == "at" and "cannot run back" in info.value.reason


def test_e6_after_a_frozen_at_is_refused_later_commands_without_at_apply() -> None:
    state = tenant(T0)
    with pytest.raises(Rejection):
        decide(state, lead(1, at="2999-01-01T00:00:00Z"), now=T0, correlation_id="c")
    for n in range(2, 5):
        fold(state, decide(state, lead(n), now=T0 + timedelta(seconds=n), correlation_id="c"))
    assert sorted(state.records) == ["lead-2", "lead-3", "lead-4"]
    assert state.last_at == T0 + timedelta(seconds=4)


def test_e6_a_recorded_rejection_of_a_future_at_does_not_date_the_tenant_ahead() -> None:
    engine = Engine.open_in_memory()
    now = datetime.now(UTC)
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **x}) for x in (
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "CreateLead", "record": "frozen", "owner": "mia", "name": "F",
         "emails": ["f@x.test"], "at": "2999-01-01T00:00:00Z"},
        {"cmd": "CreateLead", "record": "next", "owner": "mia", "name": "N",
         "emails": ["n@x.test"]})], now=now)
    assert [(n, f) for n, _, f, _ in report.rejected] == [(2, "at")]
    events = [e for _, e in engine.events(TENANT)]
    assert [type(e).__name__ for e in events] == ["UserAdded", "CommandRejected", "LeadCreated"]
    assert all(e.occurred_at <= now for e in events)  # recorded at the clock, not in 2999


# -- permissions (pure) ----------------------------------------------------------------------
def test_e6_only_admins_and_services_may_send_at() -> None:
    state = tenant(T0)
    dated = lead(1, at=iso(T0))
    with pytest.raises(Rejection) as info:
        authorise(state, dated, user="mia", service=False)
    assert info.value.field == "at"
    authorise(state, lead(1), user="mia", service=False)  # the same command without `at`
    authorise(state, dated, user="ada", service=False)
    authorise(state, dated, user="sync", service=True)


# -- engine retries on a raced store ---------------------------------------------------------
class RacedStore(EventStore):
    """In memory; before each of this engine's next `races` appends, another writer whose clock
    is `ahead` of ours appends a lead to the tenant first, so the append conflicts and the
    retry sees a latest event later than the caller's `now`."""

    def __init__(self, races: int, ahead: timedelta) -> None:
        super().__init__({"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.races, self.ahead, self.other = races, ahead, 0

    def _race(self, tenant_id: str) -> None:
        if self.races <= 0:
            return
        self.races -= 1
        self.other += 1
        theirs = TenantState(tenant_id)  # the other process's own view of the tenant
        for seq, event in self.tenant_events(tenant_id):
            evolve(theirs, event, seq)
        events = decide(theirs, lead(1000 + self.other), now=datetime.now(UTC) + self.ahead,
                        correlation_id="other")
        EventStore.append(self, theirs, events)

    def append(self, state: TenantState, events: Sequence[ev.DomainEvent]) -> None:
        if events:
            self._race(state.tenant)
        super().append(state, events)

    def append_folded(self, state: TenantState, after: int,
                      events: Sequence[ev.DomainEvent]) -> None:
        self._race(state.tenant)
        super().append_folded(state, after, events)


def raced_engine(races: int, ahead: timedelta = timedelta(hours=1)) -> tuple[Engine, RacedStore]:
    store = RacedStore(0, ahead)
    engine = Engine(store, MemoryViews())
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **x}) for x in (
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": ADDRESS})])
    assert not report.rejected, report.rejected
    store.races = races
    return engine, store


def kinds(engine: Engine) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, event in engine.events(TENANT):
        out[type(event).__name__] = out.get(type(event).__name__, 0) + 1
    return out


def test_e6_execute_retried_after_a_later_writer_applies_without_rejection() -> None:
    engine, store = raced_engine(races=3)
    report = engine.apply_lines([lead(n).model_dump_json() for n in range(1, 6)])
    assert (report.applied, report.rejected) == (5, [])
    assert store.races == 0  # every race happened
    counted = kinds(engine)
    assert counted["LeadCreated"] == 5 + 3 and "CommandRejected" not in counted
    assert len(engine.query_records(TENANT, "mia")) == 5 + 3


def test_e6_execute_batch_decides_time_again_on_every_retry() -> None:
    """The sync path: a batch decided with `now` older than the other writer's events used to
    become CommandRejected on the retry, and the worker moved the cursor on."""
    engine, store = raced_engine(races=2)
    batch = [cmd({"cmd": "SyncMessage", "mailbox": "mia-gmail",
                  "message": message(i).model_dump(mode="json", by_alias=True)})
             for i in range(1, 11)]
    results = engine.execute_batch(batch, now=datetime.now(UTC), correlation_id="sync:1")
    assert [type(e) for r in results for e in r] == [ev.MessageSynced] * 10
    assert store.races == 0
    counted = kinds(engine)
    assert counted["MessageSynced"] == 10 and counted["LeadCreated"] == 2
    assert "CommandRejected" not in counted
    (status,) = engine.query_status(TENANT, "mia", "mia-gmail")
    assert (status["synced"], status["rejected"], status["last_error"]) == (10, 0, None)


# -- sync workers: a batch that still fails is given back -------------------------------------
class FailingStore(EventStore):
    """In memory; every batch append fails with `error` while `failing`."""

    def __init__(self, error: Exception) -> None:
        super().__init__({"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.error, self.failing = error, False

    def append_folded(self, state: TenantState, after: int,
                      events: Sequence[ev.DomainEvent]) -> None:
        if self.failing:
            self.forget(state.tenant)  # as the real store does on a failure
            raise self.error
        super().append_folded(state, after, events)


@pytest.mark.parametrize("error", [ConcurrencyConflict("tenant 'acme' changed concurrently"),
                                   StoreError("disk full")], ids=["conflict", "store_error"])
def test_e6_a_batch_that_still_fails_is_not_acked_and_moves_no_cursor(error: Exception) -> None:
    store = FailingStore(error)
    engine = Engine(store, MemoryViews())
    report = engine.apply_lines([json.dumps({"tenant": TENANT, **x}) for x in (
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": ADDRESS})])
    assert not report.rejected
    sources = FakeSources()
    worker = SyncWorker(engine, sources, batch_size=3)
    worker.catch_up()  # first sync: an empty mailbox, cursor "0"
    assert engine.state(TENANT).mailboxes["mia-gmail"].cursor == "0"
    sources.box(ADDRESS).add(*(message(i) for i in range(1, 8)))
    queue = FakeWorkQueue()
    payload = orjson.dumps({"delivery_id": "gmail:1", "subscription": "s",
                            "email_address": ADDRESS, "history_id": 7})
    asyncio.run(queue.publish("gmail", "gmail:1", payload))
    options = LoopOptions(max_attempts=5, backoff=0.0)

    async def once() -> str:
        (delivery,) = await queue.fetch(1, 1.0)
        return await process(worker, queue, delivery, options)

    store.failing = True
    # given back either way: a conflict as a retry, a store error as an outage (no attempt counted)
    assert asyncio.run(once()) in ("retry", "outage")
    assert queue.acked == [] and "gmail:1" in queue.items  # given back to the queue
    state = engine.state(TENANT)
    assert state.mailboxes["mia-gmail"].cursor == "0"
    assert kinds(engine).get("MessageSynced", 0) == 0
    store.failing = False
    provider, body, attempts, _ = queue.items["gmail:1"]
    queue.items["gmail:1"] = (provider, body, attempts, 0.0)  # due now, not after its delay
    assert asyncio.run(once()) == "done"
    assert queue.acked == ["gmail:1"]
    counted = kinds(engine)
    assert counted["MessageSynced"] == 7 and "CommandRejected" not in counted
    (status,) = engine.query_status(TENANT, "mia", "mia-gmail")
    assert (status["synced"], status["cursor"], status["rejected"]) == (7, "7", 0)


def test_sync_status_counts_every_rejected_command_and_dead_letter_of_its_mailbox() -> None:
    engine, _ = raced_engine(races=0)
    late = T0 - timedelta(days=1)  # before the tenant's latest event: rejected naming `at`
    batch = [cmd({"cmd": "SyncMessage", "mailbox": "mia-gmail", "at": iso(late),
                  "message": message(1).model_dump(mode="json", by_alias=True)}),
             cmd({"cmd": "SyncMessage", "mailbox": "mia-gmail",
                  "message": message(2).model_dump(mode="json", by_alias=True)})]
    results = engine.execute_batch(batch, now=datetime.now(UTC), correlation_id="sync:1")
    assert [[type(e) for e in r] for r in results] == [[ev.CommandRejected], [ev.MessageSynced]]
    (status,) = engine.query_status(TENANT, "mia", "mia-gmail")
    assert (status["synced"], status["rejected"]) == (1, 1)
    assert status["last_error"].startswith("SyncMessage: at: ")
    worker = SyncWorker(engine, FakeSources())
    worker.directory.follow(engine)  # knows the mailbox's address (done on every delivery)
    payload = orjson.dumps({"delivery_id": "gmail:9", "subscription": "s",
                            "email_address": ADDRESS, "history_id": 9})
    assert worker.record_dead_letter(Delivery("gmail", "gmail:9", payload, 5), "dl-1",
                                     "ProviderError: outage")
    (status,) = engine.query_status(TENANT, "mia", "mia-gmail")
    assert (status["rejected"], status["last_error"]) == (2, "dead letter: ProviderError: outage")
    # a rejection naming no mailbox of the tenant counts nowhere
    other = engine.execute_batch([cmd({"cmd": "SyncMessage", "mailbox": "nope",
                                       "message": message(3).model_dump(mode="json",
                                                                        by_alias=True)})],
                                 now=datetime.now(UTC), correlation_id="sync:2")
    assert [type(e) for r in other for e in r] == [ev.CommandRejected]
    assert engine.query_status(TENANT, "mia", "mia-gmail")[0]["rejected"] == 2
    assert all(live == rebuilt for live, rebuilt in engine.verify().values())  # E3
