"""Production mode (issue #3): the engine on PostgreSQL answers exactly as on SQLite (E3, E4).

The same generated histories go through a SQLite engine and a PostgreSQL engine; every query and
every projection checksum must agree, and rebuild / verify work on PostgreSQL too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from histories import history

from adapters.errors import StoreError
from adapters.views.postgres import PostgresViews
from domain.errors import NotFound
from projections.rows import PROJECTIONS
from runners.bootstrap.config import open_engine
from runners.bootstrap.config_postgres import postgres_env
from runners.bootstrap.settings import load_settings
from runners.services.engine import Engine
from runners.services.rebuild import rebuild_in_parts

pytestmark = pytest.mark.integration
TENANT = "acme"
USERS = [f"u{i}" for i in range(5)]
RECORDS = ("c0", "l0", "d0", "c1", "l1", "d1")
THREADS = sorted(f"mb{m}:{t}" for m in range(3) for t in ("t1", "t2", "t3"))


def _try(ask: Callable[[], Any]) -> Any:
    try:
        return ask()
    except NotFound:
        return "not found"


def answers(engine: Engine, at: datetime | None = None) -> dict[str, Any]:
    """Every timeline, mailbox, thread, explain, records and status answer of the history."""
    out: dict[str, Any] = {}
    for v in USERS:
        out[f"mailbox/{v}"] = _try(lambda v=v: engine.query_mailbox(TENANT, v, at=at))
        out[f"mailbox/{v}/INBOX"] = _try(lambda v=v: engine.query_mailbox(TENANT, v, "INBOX",
                                                                          at=at))
        out[f"records/{v}"] = _try(lambda v=v: engine.query_records(TENANT, v, at=at))
        out[f"status/{v}"] = _try(lambda v=v: engine.query_status(TENANT, v, at=at))
        for r in RECORDS:
            out[f"timeline/{v}/{r}"] = _try(lambda v=v, r=r: engine.query_timeline(
                TENANT, v, r, at=at))
        for t in THREADS:
            out[f"thread/{v}/{t}"] = _try(lambda v=v, t=t: engine.query_thread(
                TENANT, v, t, at=at))
            out[f"explain/{v}/{t}"] = _try(lambda v=v, t=t: engine.query_explain(
                TENANT, v, t, at=at))
    return out


def checksums(engine: Engine) -> dict[str, str]:
    return engine.checksums()


@pytest.fixture
def engines(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    lite = open_engine(str(tmp_path / "lite.db"), None)
    pg = open_engine(str(tmp_path / "unused.db"), postgres_url)
    yield lite, pg
    lite.close()
    pg.close()


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = current_schema()").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("seed", range(3))
def test_e3_postgres_and_sqlite_give_identical_answers_and_checksums(
        engines: tuple[Engine, Engine], seed: int) -> None:
    lite, pg = engines
    lines = [orjson.dumps(c) for c in history(seed)]
    middle = datetime.fromisoformat(history(seed)[len(lines) // 2]["at"])
    for chunk in (lines[:40], lines[40:]):  # two batches, as two CLI calls would
        a, b = lite.apply_lines(chunk), pg.apply_lines(chunk)
        assert (a.applied, a.unchanged, a.rejected) == (b.applied, b.unchanged, b.rejected)
    assert pg.head() == lite.head()
    live = answers(lite)
    assert answers(pg) == live
    assert sum(1 for v in live.values() if v and v != "not found") >= 20  # non-trivial
    assert checksums(pg) == checksums(lite)
    assert answers(pg, at=middle) == answers(lite, at=middle)  # E4 on both


def test_e3_rebuild_and_verify_on_postgres(engines: tuple[Engine, Engine],
                                           postgres_url: str) -> None:
    lite, pg = engines
    lines = [orjson.dumps(c) for c in history(7)]
    lite.apply_lines(lines)
    pg.apply_lines(lines)
    before, expected = answers(pg), checksums(lite)
    assert checksums(pg) == expected

    pg.rebuild("timeline")
    assert checksums(pg) == expected
    pg.rebuild()
    assert checksums(pg) == expected
    assert answers(pg) == before
    assert all(live == rebuilt for live, rebuilt in pg.verify().values())
    assert pg.positions() == dict.fromkeys(PROJECTIONS, pg.head())
    assert not {t for t in _tables(postgres_url) if "__" in t}  # scratch tables dropped

    pg.stores().views.write({"timeline": {(TENANT, "c0"): {"forged": {"thread": "x"}}}}, {})
    results = pg.verify()
    assert results["timeline"][0] != results["timeline"][1]
    assert results["mailbox"][0] == results["mailbox"][1]
    pg.rebuild("timeline")  # repairs it
    assert all(live == rebuilt for live, rebuilt in pg.verify().values())
    assert answers(pg) == before

    # new commands after a rebuild are projected incrementally as before
    more = [orjson.dumps(c) for c in history(8, length=30)][8:]
    lite.apply_lines(more)
    pg.apply_lines(more)
    assert checksums(pg) == checksums(lite)


def test_e3_rebuild_in_parts_equals_one_build_and_takes_in_what_was_appended_meanwhile(
        engines: tuple[Engine, Engine], postgres_url: str) -> None:
    lite, pg = engines
    commands = history(9, length=300)
    first, later = [orjson.dumps(c) for c in commands[:250]], \
        [orjson.dumps(c) for c in commands[250:]]
    lite.apply_lines(first + later)
    pg.apply_lines(first)
    pg.stores().views.write({"timeline": {(TENANT, "c0"): {"forged": {"thread": "x"}}}}, {})
    appended: list[int] = []

    def meanwhile(done: int, total: int) -> None:  # a writer appends while the parts build
        if not appended and done < total:
            appended.append(pg.apply_lines(later).applied)

    sizes = pg.stores().views.mailbox_sizes()  # type: ignore[attr-defined]
    assert sizes and sum(sizes.values()) == sum(
        m.synced for m in pg.state(TENANT).mailboxes.values())  # parts balance by them
    store, views = pg.stores()
    env = postgres_env(postgres_url, schema=views.schema)  # type: ignore[attr-defined]
    rebuild_in_parts(store, views, lambda suffix: PostgresViews(postgres_url, suffix=suffix),
                     postgres_url, env, list(PROJECTIONS), 3, meanwhile, batch_size=5)
    assert appended and appended[0] > 0
    assert pg.head() == lite.head()
    assert checksums(pg) == checksums(lite)  # the forged row is gone, the later events are in
    assert pg.positions() == dict.fromkeys(PROJECTIONS, pg.head())
    assert not {t for t in _tables(postgres_url) if "__" in t}  # scratch tables dropped
    pg.rebuild(parts=2)  # the CLI's way in (PostgreSQL: part processes)
    assert checksums(pg) == checksums(lite)


def test_a_rebuild_part_that_fails_fails_the_rebuild_and_swaps_nothing(
        engines: tuple[Engine, Engine], postgres_url: str) -> None:
    _, pg = engines
    pg.apply_lines([orjson.dumps(c) for c in history(3, length=60)])
    before = checksums(pg)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # an event nobody can decode
        conn.execute("INSERT INTO crmsync_events (originator_id, originator_version, topic, "
                     "state) VALUES (gen_random_uuid(), 1, 'domain.events:NoSuchEvent', "
                     "'{}'::bytea)")
    with pytest.raises(StoreError, match=r"rebuild part \d of 2 failed: .*NoSuchEvent"):
        pg.rebuild(parts=2)
    assert checksums(pg) == before  # live views untouched
    assert all(pos < pg.head() for pos in pg.positions().values())


def test_events_and_views_share_the_urls_schema(postgres_url: str, tmp_path: Path) -> None:
    schema = postgres_url.rsplit("%3D", 1)[1]
    assert postgres_env(postgres_url)["POSTGRES_SCHEMA"] == schema
    engine = open_engine(str(tmp_path / "unused.db"), postgres_url)
    engine.apply_lines([orjson.dumps(c) for c in history(1, length=5)])
    engine.close()
    tables = _tables(postgres_url)
    assert {f"view_{p}" for p in PROJECTIONS} | {"view_tracking"} <= tables
    assert any(t.endswith("events") for t in tables), tables
    assert not (tmp_path / "unused.db").exists()
    again = open_engine(str(tmp_path / "unused.db"), postgres_url)  # second start: idempotent
    assert again.head() > 5
    again.close()


def test_engines_starting_together_on_a_fresh_schema_all_open(postgres_url: str,
                                                              tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_engine(str(tmp_path / "unused.db"), postgres_url).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_open_engine_reads_the_environment_and_falls_back_to_sqlite(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_POSTGRES_URL", postgres_url)
    engine = open_engine(str(tmp_path / "no.db"))
    assert isinstance(engine.stores().views, PostgresViews)
    engine.close()
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL")
    engine = open_engine(str(tmp_path / "yes.db"))
    assert not isinstance(engine.stores().views, PostgresViews)
    engine.close()
    assert (tmp_path / "yes.db").exists()
    assert not (tmp_path / "no.db").exists()


def test_postgres_env_parses_libpq_urls() -> None:
    url = ("postgresql://bob:p%40ss@db.example:6543/crm"
           "?options=-c%20search_path%3Dcrm_prod,public&connect_timeout=4")
    env = postgres_env(url, settings=load_settings({}))
    assert env == {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "crm",
                   "POSTGRES_HOST": "db.example", "POSTGRES_PORT": "6543",
                   "POSTGRES_USER": "bob", "POSTGRES_PASSWORD": "p@ss",
                   "POSTGRES_CONNECT_TIMEOUT": "4", "POSTGRES_SCHEMA": "crm_prod"}
    # the content master key travels with the store's settings (rebuild part processes)
    keyed = postgres_env(url, settings=load_settings({"CRMSYNC_CONTENT_KEY": "a2V5"}))
    assert keyed == {**env, "CONTENT_KEY": "a2V5"}
    assert postgres_env("postgresql://u@h/d", schema="fallback")["POSTGRES_SCHEMA"] == "fallback"
    assert "POSTGRES_SCHEMA" not in postgres_env("postgresql://u@h/d")
    assert "POSTGRES_ENABLE_DB_FUNCTIONS" not in env
