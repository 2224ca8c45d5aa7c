"""The view store port: the in-memory fake and SQLite pass the same contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.memory_views import MemoryViews
from adapters.sqlite_views import SqliteViews
from projections.ports import ViewStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "sqlite"])
def views(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewStore]:
    if request.param == "memory":
        yield MemoryViews()
        return
    store = SqliteViews(str(tmp_path / "views.db"))
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
