"""Tenant snapshots (restart cost): a restarted process restores the newest snapshot and folds
only what came after it, to the very state a fold of the whole stream gives; a snapshot that
does not verify, was taken by other code or cannot be read is ignored. SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from histories import history

from adapters.eventstore.snapshots import Snapshots, code_version
from adapters.eventstore.snapshots_sqlite import SqliteSnapshotRows
from adapters.eventstore.store import EventStore
from domain.state import TenantState
from runners.bootstrap.config import open_engine, snapshot_key
from runners.services.engine import Engine

pytestmark = pytest.mark.integration
TENANT = "acme"
SECRET = "snapshot-test-secret-0123456789"


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str | None]]:
    monkeypatch.setenv("CRMSYNC_SECRET", SECRET)
    monkeypatch.setenv("CRMSYNC_SNAPSHOT_EVERY", "20")
    monkeypatch.delenv("CRMSYNC_SNAPSHOT_KEY", raising=False)
    monkeypatch.delenv("CRMSYNC_SNAPSHOTS", raising=False)
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield str(tmp_path / "crm.db"), url


def apply(engine: Engine, commands: list[dict[str, object]]) -> None:
    engine.apply_lines([orjson.dumps(c) for c in commands])


def folded_from_the_log(engine: Engine) -> TenantState:
    fresh = EventStore.__new__(EventStore)  # the same store, without snapshots or cache
    fresh.app, fresh._states, fresh.snapshots = engine.stores().events.app, {}, None
    fresh.keys = engine.stores().events.keys
    return fresh.state(TENANT)


def test_a_restarted_process_restores_the_snapshot_and_folds_only_what_came_after(
        where: tuple[str, str | None]) -> None:
    db, url = where
    commands = history(11, length=240)
    first = open_engine(db, url)
    apply(first, commands[:120])
    first.close()

    second = open_engine(db, url)  # its first load folds the whole stream: it takes a snapshot
    assert second.stores().events.snapshots is not None
    loaded = second.state(TENANT)
    taken = second.stores().events.snapshots.restore(TENANT)
    assert taken is not None and taken.seq == loaded.seq > 20
    apply(second, commands[120:])
    second.close()

    third = open_engine(db, url)
    assert third.stores().events.snapshots is not None
    restored = third.stores().events.snapshots.restore(TENANT)
    assert restored is not None and restored.seq == taken.seq  # still the one from the load
    state = third.state(TENANT)
    assert state.seq > taken.seq  # folded on from the snapshot
    assert state == folded_from_the_log(third)
    third.close()


def _snapshot_taken(db: str, length: int) -> tuple[Engine, TenantState, SqliteSnapshotRows,
                                                    Snapshots]:
    """An engine on `db` with a tenant's history folded and its snapshot taken."""
    engine = Engine.open_sqlite(db)
    apply(engine, history(3, length=length))
    state = engine.state(TENANT)
    rows = SqliteSnapshotRows(db)
    snapshots = Snapshots(rows, SECRET.encode())
    snapshots.take(state)
    return engine, state, rows, snapshots


def test_a_snapshot_that_does_not_verify_or_comes_from_other_code_is_ignored(
        tmp_path: Path) -> None:
    db = str(tmp_path / "crm.db")
    engine, state, rows, snapshots = _snapshot_taken(db, length=80)
    assert snapshots.restore(TENANT) == state
    assert Snapshots(rows, b"another-key-of-16-bytes").restore(TENANT) is None
    with sqlite3.connect(db) as conn:
        version, _seq, _mac, blob = conn.execute(
            "SELECT version, seq, mac, state FROM tenant_snapshots").fetchone()
        conn.execute("UPDATE tenant_snapshots SET state = ?",
                     (blob[:-1] + bytes([blob[-1] ^ 1]),))
    assert snapshots.restore(TENANT) is None  # tampered
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tenant_snapshots SET state = ?, version = 'older-code'", (blob,))
    assert version == code_version()
    assert snapshots.restore(TENANT) is None  # other code took it
    assert snapshots.restore("nobody") is None
    store = engine.stores().events
    store.snapshots, store._states = snapshots, {}
    assert engine.state(TENANT) == state  # folded from the log instead
    engine.close()


def test_a_snapshot_moved_to_another_row_or_seq_does_not_verify(tmp_path: Path) -> None:
    # the blob is no longer hashed whole (issue #15): the GCM tag authenticates it, with the
    # row's tenant, version and seq as associated data, so a row edited around it is refused
    db = str(tmp_path / "crm.db")
    engine, state, rows, snapshots = _snapshot_taken(db, length=40)
    version, seq, mac, blob = rows.read(TENANT) or ("", 0, b"", b"")
    rows.write("other", version, seq, mac, blob)
    assert snapshots.restore("other") is None  # another tenant's row
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tenant_snapshots SET seq = seq + 1 WHERE tenant = ?", (TENANT,))
    assert snapshots.restore(TENANT) is None  # another position
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tenant_snapshots SET seq = ? WHERE tenant = ?", (seq, TENANT))
    assert snapshots.restore(TENANT) == state
    engine.close()


def test_snapshots_need_a_key_and_can_be_switched_off() -> None:
    assert snapshot_key({}) is None
    assert snapshot_key({"CRMSYNC_SECRET": "short"}) is None
    assert snapshot_key({"CRMSYNC_SECRET": SECRET}) == SECRET.encode()
    assert snapshot_key({"CRMSYNC_SECRET": SECRET, "CRMSYNC_SNAPSHOT_KEY": "k" * 20}) == b"k" * 20
    assert snapshot_key({"CRMSYNC_SECRET": SECRET, "CRMSYNC_SNAPSHOTS": "off"}) is None
    with pytest.raises(ValueError, match="16 bytes"):
        Snapshots(SqliteSnapshotRows(":memory:"), b"short")


def test_postgres_snapshot_rows_keep_the_newest(postgres_url: str) -> None:
    from adapters.eventstore.snapshots_postgres import PostgresSnapshotRows

    rows = PostgresSnapshotRows(postgres_url)
    rows.write("t", code_version(), 5, b"m5", b"s5")
    rows.write("t", code_version(), 3, b"m3", b"s3")  # an older one arriving late loses
    assert rows.read("t") == (code_version(), 5, b"m5", b"s5")
    rows.write("t", code_version(), 9, b"m9", b"s9")
    assert rows.read("t") == (code_version(), 9, b"m9", b"s9")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM tenant_snapshots").fetchone() == (1,)


def test_a_restarted_projection_runner_starts_from_its_snapshot(
        where: tuple[str, str | None]) -> None:
    from projections.projector import Projector, catch_up
    from runners.entrypoints.projection_runner import keep, restore

    db, url = where
    commands = history(12, length=240)
    engine = open_engine(db, url)
    engine.follow = False  # the views are written by the runner below, not by apply
    apply(engine, commands[:150])
    store, views = engine.stores()  # the runner's way: it writes the views itself
    first = Projector()
    read = catch_up(store, views, first)
    keep(engine, first, read)  # folded 20+ events: a snapshot at its position
    apply(engine, commands[150:])

    second = Projector()
    restore(engine, second)
    assert second.position == first.position > 20
    assert second.states == first.states
    assert catch_up(store, views, second) == \
        engine.head() - first.position  # only what came after the snapshot
    verified = engine.verify()
    assert all(live == rebuilt for live, rebuilt in verified.values()), verified
    engine.close()


def test_a_runner_snapshot_ahead_of_the_views_starts_over(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from projections.projector import Projector, catch_up
    from runners.entrypoints.projection_runner import keep, restore

    monkeypatch.setenv("CRMSYNC_SECRET", SECRET)
    monkeypatch.setenv("CRMSYNC_SNAPSHOT_EVERY", "1")
    engine = open_engine(str(tmp_path / "crm.db"), None)
    engine.follow = False
    apply(engine, history(4, length=60))
    store, views = engine.stores()  # the runner's way: it writes the views itself
    projector = Projector()
    keep(engine, projector, catch_up(store, views, projector))
    for name in ("timeline", "mailbox"):
        views.reset(name)  # e.g. restored from an older backup
    again = Projector()
    restore(engine, again)
    assert again.position == projector.position
    catch_up(store, views, again)
    verified = engine.verify()
    assert all(live == rebuilt for live, rebuilt in verified.values()), verified
    engine.close()
