"""SPEC E7: each tenant's stored events form a hash chain; `verify --log` names the first position
that fails. Tampering is done the way an attacker with database access would: on the stored row.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from adapters.errors import ConcurrencyConflict
from adapters.eventstore.store import EventStore, stream_id
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine
from tests.integration.test_l2_crypto_shredding import MAIL, SETUP, apply, at

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str | None]]:
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield str(tmp_path / "crm.db"), url


def filled(db: str, url: str | None) -> Engine:
    engine = open_engine(db, url)
    apply(engine, SETUP, 0)
    apply(engine, MAIL, 10)
    apply(engine, [{**SETUP[0], "tenant": "other"}], 12)  # a second tenant's chain
    return engine


def position_of(engine: Engine, tenant: str, seq: int) -> int:
    notes = engine.stores().events.app.recorder.select_notifications(start=0, limit=10_000)
    return next(n.id for n in notes if n.originator_id == stream_id(tenant)
                and n.originator_version == seq)


def tamper(db: str, url: str | None, tenant: str, seq: int, edit: str) -> None:
    """Change one stored event directly in the database: flip one bit, or delete it."""
    stream = stream_id(tenant)
    if url is None:
        conn = sqlite3.connect(db)
        where = "originator_id = ? AND originator_version = ?"
        args: tuple[object, ...] = (stream.hex, seq)
        (state,) = conn.execute(f"SELECT state FROM stored_events WHERE {where}", args).fetchone()
        if edit == "flip":
            changed = bytearray(state)
            changed[len(changed) // 2] ^= 0x01
            conn.execute(f"UPDATE stored_events SET state = ? WHERE {where}",
                         (bytes(changed), *args))
        else:
            conn.execute(f"DELETE FROM stored_events WHERE {where}", args)
        conn.commit()
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        where = "originator_id = %s AND originator_version = %s"
        row = pg.execute(f"SELECT state FROM crmsync_events WHERE {where}", (stream, seq))
        (state,) = row.fetchone() or (b"",)
        if edit == "flip":
            changed = bytearray(state)
            changed[len(changed) // 2] ^= 0x01
            pg.execute(f"UPDATE crmsync_events SET state = %s WHERE {where}",
                       (bytes(changed), stream, seq))
        else:
            pg.execute(f"DELETE FROM crmsync_events WHERE {where}", (stream, seq))


def cli(db: str, url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("CRMSYNC_POSTGRES_URL", None)
    store = ["--postgres", url] if url else ["--db", db]
    return subprocess.run([sys.executable, "-m", "runners.entrypoints.cli", *store, *args],
                          check=False, env=env, capture_output=True, text=True, timeout=120)


def test_e7_an_untouched_log_verifies_and_a_flipped_bit_is_found_by_position(
        where: tuple[str, str | None]) -> None:
    db, url = where
    engine = filled(db, url)
    try:
        check = engine.verify_log()
        assert check.failure is None and check.events == len(SETUP) + len(MAIL) + 1
        assert sorted(check.heads) == ["acme", "other"]
        assert check.heads["acme"][0] == len(SETUP) + len(MAIL)
        target = position_of(engine, "acme", 5)
    finally:
        engine.close()
    ok = cli(db, url, "verify", "--log")
    assert ok.returncode == 0, ok.stderr
    assert f"checked {len(SETUP) + len(MAIL) + 1} events" in ok.stdout
    assert f"tenant acme seq {len(SETUP) + len(MAIL)} head " in ok.stdout

    tamper(db, url, "acme", 5, "flip")
    broken = cli(db, url, "verify", "--log")
    assert broken.returncode == 1
    assert f"position {target} (tenant acme, seq 5)" in broken.stderr
    alone = cli(db, url, "verify", "--log", "--tenant", "acme")
    assert alone.returncode == 1 and "seq 5" in alone.stderr
    other = cli(db, url, "verify", "--log", "--tenant", "other")  # another tenant's chain holds
    assert other.returncode == 0, other.stderr


def test_e7_a_deleted_event_breaks_the_chain(where: tuple[str, str | None]) -> None:
    db, url = where
    engine = filled(db, url)
    engine.close()
    tamper(db, url, "acme", 3, "delete")
    engine = open_engine(db, url)
    try:
        check = engine.verify_log("acme")
        assert check.failure is not None and "seq 4 follows seq 2" in check.failure
    finally:
        engine.close()


def test_e7_the_last_event_is_covered_too(where: tuple[str, str | None]) -> None:
    db, url = where
    engine = filled(db, url)
    last = engine.state("acme").seq
    engine.close()
    tamper(db, url, "acme", last, "flip")
    engine = open_engine(db, url)
    try:
        failure = engine.verify_log().failure
        assert failure is not None and f"seq {last})" in failure
    finally:
        engine.close()


def test_e7_concurrent_writers_keep_one_linear_chain(tmp_path: Path) -> None:
    db = str(tmp_path / "crm.db")
    first, second = EventStore.sqlite(db), EventStore.sqlite(db)
    try:
        def added(user: str) -> ev.UserAdded:
            return ev.UserAdded(tenant="acme", actor="system:test", occurred_at=at(1),
                                correlation_id=user, user=user, email=f"{user}@acme.test",
                                role="member")
        first.append(first.state("acme"), [added("a")])
        stale = second.state("acme")
        first.append(first.state("acme"), [added("b")])
        with pytest.raises(ConcurrencyConflict):
            second.append(stale, [added("c")])  # both chained to seq 1's link: one loses
        second.append(second.state("acme"), [added("c")])
        first.append(first.state("acme"), [added("d")])
        check = first.verify_log("acme")
        assert check.failure is None and check.events == 4
        users = [e.user for _, e in first.tenant_events("acme") if isinstance(e, ev.UserAdded)]
        assert users == ["a", "b", "c", "d"]
        assert orjson.loads(first.app.recorder.select_events(stream_id("acme"))[0].state
                            )["_chain"]  # the link is part of the stored JSON
    finally:
        first.close()
        second.close()
