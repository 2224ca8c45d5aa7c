"""The event store port: the same contract on eventsourcing's in-memory, SQLite and PostgreSQL
recorders, with our orjson + pydantic mapper."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.errors import ConcurrencyConflict
from adapters.eventstore.store import EventStore
from domain import events as ev
from domain.state import TenantState

pytestmark = pytest.mark.integration
AT = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "memory":
        s = EventStore.in_memory()
    elif request.param == "sqlite":
        s = EventStore.sqlite(str(tmp_path / "events.db"))
    else:
        s = EventStore(request.getfixturevalue("postgres_env"))
    yield s
    s.close()


def _user(tenant: str, user: str) -> ev.UserAdded:
    return ev.UserAdded(tenant=tenant, actor="system:test", occurred_at=AT, correlation_id="c",
                        user=user, email=f"{user}@x.test", role="member")


def _message(tenant: str) -> ev.MessageSynced:
    msg = ev.MailMessage.model_validate({
        "id": "m1", "from": "a@x.test", "to": ["b@x.test"], "subject": "Grüße ✓",
        "sent_at": "2026-04-30T23:59:59.5+02:00",
        "attachments": [{"name": "a.pdf", "size": 3, "content_type": "application/pdf"}]})
    return ev.MessageSynced(tenant=tenant, actor="system:sync", occurred_at=AT,
                            correlation_id="d1", mailbox="mb", thread="mb:t", message=msg)


def test_e1_events_round_trip_typed_through_the_store(store: EventStore) -> None:
    state = store.state("t1")
    connected = ev.MailboxConnected(tenant="t1", actor="ann", occurred_at=AT, correlation_id="c",
                                    mailbox="mb", user="ann", provider="imap",
                                    address="ann@x.test", scope={"mode": "all"},
                                    backfill_days=30, credentials_set=True)
    store.append(state, [_user("t1", "ann"), connected, _message("t1")])
    read = list(store.tenant_events("t1"))
    assert [seq for seq, _ in read] == [1, 2, 3]
    assert read[0][1] == _user("t1", "ann")
    assert read[1][1] == connected
    message = read[2][1]
    assert isinstance(message, ev.MessageSynced)
    assert message == _message("t1")
    assert message.message.sent_at == datetime(2026, 4, 30, 21, 59, 59, 500000, tzinfo=UTC)
    assert message.occurred_at.microsecond == 123456


def test_e1_log_orders_all_tenants_and_pages(store: EventStore) -> None:
    for i in range(5):
        for tenant in ("a", "b"):
            store.append(store.state(tenant), [_user(tenant, f"u{i}")])
    assert store.max_position() == 10
    first = store.read_log(0, 4)
    rest = store.read_log(first[-1].position, 100)
    log = first + rest
    assert [e.position for e in log] == list(range(1, 11))
    assert [(e.event.tenant, e.seq) for e in log[:4]] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_concurrent_append_to_one_tenant_is_a_conflict_and_appends_nothing(
        store: EventStore) -> None:
    store.append(store.state("t"), [_user("t", "ann")])
    stale = TenantState("t", seq=0)
    with pytest.raises(ConcurrencyConflict):
        store.append(stale, [_user("t", "bob"), _user("t", "cid")])
    assert [e.user for _, e in store.tenant_events("t")] == ["ann"]  # type: ignore[attr-defined]
    assert store.state("t").seq == 1


def test_a_tenants_stream_is_read_in_pages_that_join_exactly(store: EventStore) -> None:
    for i in range(7):
        store.append(store.state("a"), [_user("a", f"u{i}")])
        store.append(store.state("b"), [_user("b", f"v{i}")])
    for page in (1, 3, 7, 100):
        read = list(store.tenant_events("a", page=page))
        assert [seq for seq, _ in read] == list(range(1, 8))
        assert [e.user for _, e in read] == [f"u{i}" for i in range(7)]  # type: ignore[attr-defined]
    assert [seq for seq, _ in store.tenant_events("a", after=5, page=1)] == [6, 7]
    assert list(store.tenant_events("a", after=7, page=3)) == []


def test_the_log_read_before_decoding_keeps_what_the_filter_accepts(store: EventStore) -> None:
    connected = ev.MailboxConnected(tenant="a", actor="ann", occurred_at=AT, correlation_id="c",
                                    mailbox="mb", user="ann", provider="imap",
                                    address="ann@x.test", scope={"mode": "all"},
                                    backfill_days=30, credentials_set=True)
    store.append(store.state("a"), [_user("a", "ann"), connected])
    for i in range(3):
        message = _message("a")
        store.append(store.state("a"), [message.model_copy(update={
            "message": message.message.model_copy(update={"id": f"m{i}"})})])
    kept, last = store.read_log_kept(0, 4, lambda kind, data: kind is not ev.MessageSynced)
    assert last == 4 and [e.position for e in kept] == [1, 2]
    kept, last = store.read_log_kept(last, 100, lambda kind, data: b'"m2"' in data)
    assert last == 5 and [e.position for e in kept] == [5]
    assert isinstance(kept[0].event, ev.MessageSynced) and kept[0].event.message.id == "m2"
    assert store.read_log_kept(5, 10, lambda kind, data: True) == ([], 5)
