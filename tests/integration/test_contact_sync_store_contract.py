"""The contact-sync runner's state: the in-memory fake, SQLite and PostgreSQL pass one suite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.tracking.contact_sync import ContactSyncStore, MemoryKeyValues
from adapters.tracking.contact_sync_postgres import PostgresKeyValues
from adapters.tracking.contact_sync_sqlite import SqliteKeyValues

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContactSyncStore]:
    if request.param == "memory":
        yield ContactSyncStore(MemoryKeyValues())
        return
    if request.param == "sqlite":
        opened = ContactSyncStore(SqliteKeyValues(str(tmp_path / "crm.db")))
    else:
        opened = ContactSyncStore(PostgresKeyValues(request.getfixturevalue("postgres_url")))
    yield opened
    opened.close()


def test_position_starts_at_zero_and_moves(store: ContactSyncStore) -> None:
    assert store.position() == 0
    store.set_position(42)
    assert store.position() == 42


def test_cursors_per_tenant_user_and_folder(store: ContactSyncStore) -> None:
    store.set_cursor("acme", "mia", None, "https://g/delta?1")
    store.set_cursor("acme", "mia", "F1", "https://g/delta?2")
    store.set_cursor("beta", "mia", None, "https://g/delta?3")
    assert store.cursor("acme", "mia", None) == "https://g/delta?1"
    assert store.cursor("acme", "mia", "F1") == "https://g/delta?2"
    assert store.cursor("beta", "mia", None) == "https://g/delta?3"
    assert store.cursor("acme", "max", None) is None
    store.set_cursor("acme", "mia", None, None)
    assert store.cursor("acme", "mia", None) is None


def test_seen_categories_and_done_round_trip(store: ContactSyncStore) -> None:
    store.remember("acme", "mia", {"c1": {"fingerprint": "f1", "modified": "t1", "by": "them"}})
    assert store.seen("acme", "mia", "c1") == {"fingerprint": "f1", "modified": "t1",
                                                "by": "them"}
    assert store.seen("acme", "max", "c1") is None
    store.set_categories("acme", "mia", {"cat-1": "Base Person"})
    assert store.categories("acme", "mia") == {"cat-1": "Base Person"}
    assert store.categories("acme", "max") is None
    store.set_done("acme", "xc-1", {"ok": True, "external_id": "c2"},
                   ("mia", "c2", {"fingerprint": "f2", "modified": "t2", "by": "us"}))
    assert store.done("acme", "xc-1") == {"ok": True, "external_id": "c2"}
    assert store.seen("acme", "mia", "c2") == {"fingerprint": "f2", "modified": "t2", "by": "us"}
    store.set_done("acme", "xc-1", None)
    assert store.done("acme", "xc-1") is None


def test_sql_state_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "crm.db")
    first = ContactSyncStore(SqliteKeyValues(path))
    first.set_position(7)
    first.set_cursor("acme", "mia", None, "link")
    first.close()
    again = ContactSyncStore(SqliteKeyValues(path))
    assert again.position() == 7 and again.cursor("acme", "mia", None) == "link"
    again.close()


def test_one_runner_per_postgres_schema_holds_the_lock(postgres_url: str) -> None:
    first = ContactSyncStore(PostgresKeyValues(postgres_url))
    second = ContactSyncStore(PostgresKeyValues(postgres_url))
    try:
        assert first.try_lock()
        assert not second.try_lock()
        first.close()  # released with the session, once the server has ended it
        deadline = time.monotonic() + 10
        while not second.try_lock():
            assert time.monotonic() < deadline, "the lock outlived its session"
            time.sleep(0.05)
    finally:
        second.close()
