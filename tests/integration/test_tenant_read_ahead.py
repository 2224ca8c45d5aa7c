"""A tenant's stream read from PostgreSQL with the next page read ahead while this one is folded
(EventStore._rows, BoundedPostgresRecorder.select_stream): pages join exactly (no event lost
or read twice at a page's edge), a read stopped early or failing leaves no reader thread and
no connection held, a connection dropped between pages is read again or refused (never a page
skipped), and events appended during the read are read whole or left for the next load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from adapters.errors import StoreError
from adapters.eventstore.store import TENANT_PAGE, EventStore, stream_id
from domain import events as ev
from domain.state import TenantState, evolve

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def head(kind: type[ev.DomainEvent], n: int = 0, **fields: object) -> ev.DomainEvent:
    return kind(tenant="t", actor="system:test", occurred_at=T0 + timedelta(seconds=n),
                correlation_id="c", **fields)


def synced(n: int) -> ev.DomainEvent:
    return head(ev.MessageSynced, n, mailbox="mb", thread=f"mb:t{n % 7}", command_id=f"c{n}",
                message=ev.MailMessage(id=f"m{n}", from_=f"A{n % 5}@x.test", to=["u@x.test"],
                                       subject=f"s{n}", body="b", sent_at=T0, labels=["INBOX"]))


@pytest.fixture
def store(postgres_env: dict[str, str]) -> Iterator[EventStore]:
    s = EventStore(postgres_env)
    yield s
    s.close()


def opened(store: EventStore, messages: int) -> None:
    store.append_raw("t", 0, [
        head(ev.UserAdded, user="u", email="u@x.test", role="member"),
        head(ev.MailboxConnected, mailbox="mb", user="u", provider="gmail", address="u@x.test",
             scope={}, backfill_days=30, credentials_set=False),
        *(synced(n) for n in range(messages))])


def versions(pages: Iterator[list[tuple[int, str, bytes]]]) -> list[int]:
    return [v for page in pages for v, _, _ in page]


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tenant-read")]


def folded_by_the_model(store: EventStore) -> TenantState:
    state = TenantState("t", message_content=False)  # as the command side keeps it
    for seq, event in store.tenant_events("t"):
        evolve(state, event, seq)
    return state


def idle_connections(store: EventStore) -> int:
    stats = store.app.recorder.datastore.pool.get_stats()  # type: ignore[attr-defined]
    return int(stats.get("pool_available", 0))


def test_e1_pages_read_ahead_join_exactly_at_every_edge(store: EventStore) -> None:
    opened(store, 10)  # 12 events
    assert hasattr(store.app.recorder, "select_stream")  # the read-ahead path is under test
    for page in (1, 2, 3, 4, 6, 11, 12, 13):
        for after in (0, 1, 5, 11, 12):
            assert versions(store._rows("t", after, page)) == list(range(after + 1, 13)), \
                (page, after)
    assert not readers()


def test_e3_a_fold_across_a_page_edge_equals_the_models_fold(store: EventStore) -> None:
    opened(store, TENANT_PAGE + 1)  # two whole pages and one event: every edge is crossed
    state = store.state("t")
    assert state.seq == TENANT_PAGE + 3
    assert state == folded_by_the_model(store)
    assert not readers()


def test_a_read_stopped_early_leaves_no_reader_and_no_connection_held(
        store: EventStore) -> None:
    opened(store, 10)
    before = idle_connections(store)
    pages = store._rows("t", 0, 2)
    assert versions(iter([next(pages)])) == [1, 2]  # the next page is being read ahead
    pages.close()
    assert not readers()
    assert idle_connections(store) == before
    assert versions(store._rows("t", 0, 5)) == list(range(1, 13))  # the store reads on


def test_a_fold_that_fails_on_a_page_leaves_no_reader_no_connection_and_no_half_state(
        store: EventStore) -> None:
    opened(store, 4)  # seq 1..6
    assert store.app.recorder.select_events(stream_id("t"), gt=6) == []
    broken = StoredEvent(stream_id("t"), 7, "domain.events:MessageSynced", b'{"tenant":"t"}')
    store.app.recorder.insert_events([broken])
    store.append_raw("t", 7, [synced(100 + n) for n in range(TENANT_PAGE)])  # a 2nd page
    before = idle_connections(store)
    with pytest.raises(Exception, match="cannot decode event"):
        store.state("t")  # on the first page, while the second is read ahead
    assert not readers()
    assert idle_connections(store) == before
    assert "t" not in store._states  # nothing half-folded is kept


def _terminate_readers_of(schema: str, url: str) -> int:
    """End the store's own sessions (those whose last statement named its schema). Asked
    again for up to 2 s: after a broken connection the pool pings the others, so until the
    reader sends its select its session may show the ping as its last statement (seen once,
    under load)."""
    deadline = time.monotonic() + 2.0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
                "pg_backend_pid() AND datname = current_database() AND position(%s in query) > 0",
                (schema,)).fetchall()
            if rows or time.monotonic() > deadline:
                return len(rows)
            time.sleep(0.01)


def test_a_connection_dropped_between_pages_is_read_again_or_refused_never_skipped(
        store: EventStore, postgres_env: dict[str, str], postgres_url: str) -> None:
    opened(store, 10)  # 12 events
    base = postgres_url.split("?", 1)[0]
    for drop_after in range(1, 5):
        pages = store._rows("t", 0, 3)
        read: list[int] = []
        try:
            for i, page in enumerate(pages):
                read += [v for v, _, _ in page]
                if i + 1 == drop_after:
                    assert _terminate_readers_of(postgres_env["POSTGRES_SCHEMA"], base) >= 1
        except StoreError:
            assert read == list(range(1, len(read) + 1))  # a prefix, refused after
        else:
            assert read == list(range(1, 13))
        assert not readers()
    assert versions(store._rows("t", 0, 3)) == list(range(1, 13))


def test_events_appended_during_the_read_are_read_whole_or_left_for_the_next_load(
        store: EventStore, postgres_env: dict[str, str]) -> None:
    opened(store, 8)  # 10 events
    other = EventStore(postgres_env)
    try:
        other_state = other.state("t")
        pages = store._rows("t", 0, 5)
        read = [v for v, _, _ in next(pages)]
        other.append(other_state, [synced(100 + n) for n in range(7)])  # one transaction
        read += versions(pages)
        assert read in (list(range(1, 11)), list(range(1, 18)))
        assert store.state("t") == folded_by_the_model(store)
        assert store.state("t").seq == 17
    finally:
        other.close()
