"""The view store port: the in-memory fake, SQLite and PostgreSQL pass the same contract."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.errors import StoreError
from adapters.views.memory import MemoryViews
from adapters.views.postgres import PostgresViews
from adapters.views.sqlite import SqliteViews
from projections.history import HISTORIES
from projections.ports import ViewStore
from projections.rows import Rows

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def views(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewStore]:
    if request.param == "memory":
        yield MemoryViews()
        return
    store: SqliteViews | PostgresViews
    if request.param == "sqlite":
        store = SqliteViews(str(tmp_path / "views.db"))
    else:
        store = PostgresViews(request.getfixturevalue("postgres_url"))
    yield store
    store.close()


def test_write_replaces_a_keys_rows_and_sets_positions_together(views: ViewStore) -> None:
    assert views.positions()["timeline"] == 0
    views.write({"timeline": {("t", "r1"): {"a": {"x": 1}, "b": {"x": [2, "é"]}}}},
                {"timeline": 5, "mailbox": 5})
    assert views.rows("timeline", "t", "r1") == {"a": {"x": 1}, "b": {"x": [2, "é"]}}
    assert views.positions()["timeline"] == 5
    assert views.positions()["mailbox"] == 5
    views.write({"timeline": {("t", "r1"): {"b": {"x": 3}}}}, {"timeline": 7})
    assert views.rows("timeline", "t", "r1") == {"b": {"x": 3}}
    views.write({"timeline": {("t", "r1"): {}}}, {"timeline": 8})
    assert views.rows("timeline", "t", "r1") == {}
    assert views.positions()["timeline"] == 8


def test_fresh_write_adds_rows_and_refuses_a_row_that_exists(views: ViewStore) -> None:
    """A build writes each key once with `fresh` (no search for old rows); a row that exists
    fails the whole write loudly instead of being duplicated or silently replaced."""
    views.write({"timeline": {("t", "r1"): {"a": {"x": 1}}}}, {}, fresh=True)
    assert views.rows("timeline", "t", "r1") == {"a": {"x": 1}}
    with pytest.raises(StoreError):
        views.write({"timeline": {("t", "r2"): {"a": {"x": 2}}, ("t", "r1"): {"a": {"x": 3}}}},
                    {"timeline": 9}, fresh=True)
    assert views.rows("timeline", "t", "r1") == {"a": {"x": 1}}
    assert views.rows("timeline", "t", "r2") == {}
    assert views.positions()["timeline"] == 0


def test_e3_ignored_events_still_advance_the_position(views: ViewStore) -> None:
    views.write({}, {"sync_status": 42})
    assert views.positions()["sync_status"] == 42


def test_v12_rows_never_cross_tenants(views: ViewStore) -> None:
    views.write({"directory": {("a", "record:r"): {"r": {"v": "a"}},
                               ("b", "record:r"): {"r": {"v": "b"}},
                               ("a", "user:u"): {"u": {"v": "u"}}}}, {})
    assert views.rows("directory", "b", "record:r") == {"r": {"v": "b"}}
    assert views.scan("directory", "a", "record:") == {"record:r": {"r": {"v": "a"}}}
    assert set(views.scan("directory", "a")) == {"record:r", "user:u"}
    assert views.scan("directory", "c") == {}


def test_checksums_depend_on_content_not_write_order(views: ViewStore, tmp_path: Path) -> None:
    views.write({"thread": {("t", "k1"): {"r": {"a": 1, "b": 2}}, ("t", "k2"): {"r": {"c": 3}}}},
                {})
    other = MemoryViews()
    other.write({"thread": {("t", "k2"): {"r": {"c": 3}}}}, {})
    other.write({"thread": {("t", "k1"): {"r": {"b": 2, "a": 1}}}}, {})
    assert views.checksum("thread") == other.checksum("thread")
    other.write({"thread": {("t", "k2"): {"r": {"c": 4}}}}, {})
    assert views.checksum("thread") != other.checksum("thread")


def test_reset_forgets_rows_and_position_of_one_projection(views: ViewStore) -> None:
    views.write({"mailbox": {("t", "u"): {"x": {}}}, "thread": {("t", "x"): {"x": {}}}},
                {"mailbox": 3, "thread": 3})
    views.reset("mailbox")
    assert views.rows("mailbox", "t", "u") == {}
    assert views.positions()["mailbox"] == 0
    assert views.rows("thread", "t", "x") == {"x": {}}
    assert views.positions()["thread"] == 3


def test_sqlite_scratch_tables_swap_into_live(tmp_path: Path) -> None:
    path = str(tmp_path / "v.db")
    live = SqliteViews(path)
    live.write({"timeline": {("t", "r"): {"old": {}}}}, {"timeline": 1})
    scratch = SqliteViews(path, suffix="__new")
    scratch.write({"timeline": {("t", "r"): {"new": {}}}}, {"timeline": 9})
    assert live.rows("timeline", "t", "r") == {"old": {}}
    scratch.swap_into_live("timeline")
    assert live.rows("timeline", "t", "r") == {"new": {}}
    assert live.positions()["timeline"] == 9
    scratch.drop()
    assert live.rows("timeline", "t", "r") == {"new": {}}
    live.close()
    scratch.close()


def test_scan_by_prefix_orders_by_code_point(views: ViewStore) -> None:
    keys = ["a", "a:b", "a:b:c", "a;", "A", "a:\uffff", "é:1", "a:Z", "a:z", "ab", "a:ß"]
    views.write({"directory": {("t", k): {"r": {"k": k}} for k in keys}}, {})
    assert list(views.scan("directory", "t", "a:")) == ["a:Z", "a:b", "a:b:c", "a:z", "a:ß",
                                                        "a:\uffff"]
    assert list(views.scan("directory", "t")) == sorted(keys)
    assert list(views.scan("directory", "t", "é")) == ["é:1"]


def test_postgres_scratch_tables_swap_into_live_while_read(postgres_url: str) -> None:
    live = PostgresViews(postgres_url)
    live.write({"timeline": {("t", "r"): {"old": {}}}}, {"timeline": 1})
    for _ in range(8):  # past psycopg's prepare threshold: prepared plans survive the swap
        assert live.rows("timeline", "t", "r") == {"old": {}}
    for round_ in range(2):  # the second swap reuses the scratch names (constraint renamed)
        scratch = PostgresViews(postgres_url, suffix="__new")
        scratch.write({"timeline": {("t", "r"): {f"new{round_}": {}}}}, {"timeline": 9 + round_})
        assert live.rows("timeline", "t", "r") != {f"new{round_}": {}}
        scratch.swap_into_live("timeline")
        assert live.rows("timeline", "t", "r") == {f"new{round_}": {}}
        assert live.positions()["timeline"] == 9 + round_
        assert scratch.positions()["timeline"] == 0
        scratch.drop()
        scratch.close()
    assert live.rows("timeline", "t", "r") == {"new1": {}}
    assert live.scan("timeline", "t") == {"r": {"new1": {}}}
    live.close()


def test_postgres_readers_wait_for_the_swap_and_then_see_the_new_table(postgres_url: str
                                                                       ) -> None:
    live = PostgresViews(postgres_url)
    live.write({"mailbox": {("t", "u"): {"old": {}}}}, {"mailbox": 1})
    scratch = PostgresViews(postgres_url, suffix="__new")
    scratch.write({"mailbox": {("t", "u"): {"new": {}}}}, {"mailbox": 2})
    seen: list[Rows] = []
    with scratch._lock:  # hold the swap transaction open while a reader queries
        conn = scratch._connect()
        with conn.transaction():
            conn.execute("LOCK TABLE view_mailbox IN ACCESS EXCLUSIVE MODE")
            reader = threading.Thread(target=lambda: seen.append(live.rows("mailbox", "t", "u")))
            reader.start()
            time.sleep(0.3)
            assert not seen  # blocked, not failing
            conn.execute("DROP TABLE view_mailbox")
            conn.execute("ALTER TABLE view_mailbox__new RENAME TO view_mailbox")
    reader.join(10)
    assert seen == [{"new": {}}]
    live.close()
    scratch.close()


def test_postgres_schema_creation_is_idempotent_and_safe_in_parallel(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresViews(postgres_url, suffix="__p").close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    again = PostgresViews(postgres_url, suffix="__p")
    assert again.positions() == dict.fromkeys(again.positions(), 0)
    again.drop()
    again.close()


def test_postgres_errors_become_store_errors(postgres_url: str) -> None:
    with pytest.raises(StoreError):
        PostgresViews("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    views = PostgresViews(postgres_url)
    with pytest.raises(StoreError):
        views.write({"thread": {("t", "bad\x00key"): {"r": {}}}}, {"thread": 1})
    assert views.positions()["thread"] == 0  # nothing of the failed batch was kept
    with pytest.raises(StoreError):
        views.drop()  # the live views are never dropped
    views.close()


def test_e4_history_versions_answer_as_of_a_moment_and_go_with_reset_and_forget(
        views: ViewStore) -> None:
    """A key's history (projections.history): its latest version at or before the moment; an
    empty version means no rows then; a version of the same moment replaces the earlier one
    (a catch-up writing a time cut by its batch end again); reset and forget_tenant clear it."""
    history = HISTORIES["timeline"]
    views.write({history: {("t", "r1"): {"0010": {"a": {"x": 1}}, "0020": {}},
                           ("t", "r2"): {"0015": {"a": {"x": 2}, "b": {"x": 3}}},
                           ("u", "r1"): {"0001": {"a": {"x": 9}}}}}, {}, fresh=True)
    assert views.rows_as_of("timeline", "t", "r1", "0009") == {}
    assert views.rows_as_of("timeline", "t", "r1", "0010") == {"a": {"x": 1}}
    assert views.rows_as_of("timeline", "t", "r1", "0019") == {"a": {"x": 1}}
    assert views.rows_as_of("timeline", "t", "r1", "0020") == {}
    assert views.scan_as_of("timeline", "t", "r", "0016") == {
        "r1": {"a": {"x": 1}}, "r2": {"a": {"x": 2}, "b": {"x": 3}}}
    assert views.scan_as_of("timeline", "t", "r", "0030") == {"r2": {"a": {"x": 2}, "b": {"x": 3}}}
    with pytest.raises(StoreError):  # a build writes each version once
        views.write({history: {("t", "r1"): {"0010": {"a": {"x": 5}}}}}, {}, fresh=True)
    views.write({history: {("t", "r1"): {"0010": {"a": {"x": 5}}}}}, {})
    assert views.rows_as_of("timeline", "t", "r1", "0011") == {"a": {"x": 5}}
    assert views.rows("timeline", "t", "r1") == {}  # live rows are not the history
    views.forget_tenant("u", ["timeline"])
    assert views.rows_as_of("timeline", "u", "r1", "0030") == {}
    views.reset("timeline")
    assert views.scan_as_of("timeline", "t", "", "0030") == {}


def test_e3_checksum_covers_the_history_but_not_versions_that_change_nothing(
        views: ViewStore) -> None:
    history = HISTORIES["directory"]
    views.write({history: {("t", "k"): {"0010": {"a": {"x": 1}}}}}, {})
    once = views.checksum("directory")
    views.write({history: {("t", "k"): {"0005": {}, "0020": {"a": {"x": 1}}}}}, {})
    assert views.checksum("directory") == once
    views.write({history: {("t", "k"): {"0030": {"a": {"x": 2}}}}}, {})
    assert views.checksum("directory") != once


def test_e4_a_scan_as_of_a_moment_over_keys_with_many_versions(views: ViewStore) -> None:
    """Sync status keys get a version per synced message (PostgreSQL walks their keys)."""
    history = HISTORIES["sync_status"]
    views.write({history: {("t", f"mb{i}"): {f"{m:04d}": {f"mb{i}": {"synced": m}}
                                             for m in range(i, 40, 3)} for i in range(3)}}, {})
    assert views.scan_as_of("sync_status", "t", "", "0010") == {
        "mb0": {"mb0": {"synced": 9}}, "mb1": {"mb1": {"synced": 10}},
        "mb2": {"mb2": {"synced": 8}}}
    assert views.scan_as_of("sync_status", "t", "mb1", "0000") == {}
    assert views.scan_as_of("sync_status", "t", "mb", "0001") == {"mb0": {"mb0": {"synced": 0}},
                                                                 "mb1": {"mb1": {"synced": 1}}}
