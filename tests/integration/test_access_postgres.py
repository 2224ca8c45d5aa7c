"""Auditor queries on PostgreSQL, where the database selects a thread's events by index before
Python reads them (adapters.eventstore.scan_postgres): the same events as a scan filtered in
Python, the same answers as the in-memory engine, also for a thread that no view shows any more
(its owner was deleted, L2) and for thread questions `at` a past time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from audit_story import STORY
from histories import T0

from adapters.eventstore.scan import Selection, scan_selected, scan_tenant
from domain import events as ev
from domain.errors import NotFound
from projections.access import ThreadScope
from runners.bootstrap.config import open_engine
from runners.services import audit
from runners.services.engine import Engine

pytestmark = pytest.mark.integration


def _lines() -> list[str]:
    return [json.dumps({"tenant": "acme", "at": (T0 + timedelta(minutes=i)).isoformat(), **c})
            for i, c in enumerate(STORY)]


@pytest.fixture
def engines(postgres_url: str, tmp_path: object) -> Iterator[tuple[Engine, Engine]]:
    pg = open_engine("unused.db", postgres_url)
    memory = Engine.open_in_memory()
    now = T0 + timedelta(minutes=len(STORY))
    for engine in (pg, memory):
        report = engine.apply_lines(_lines(), now=now)
        assert not report.rejected, report.rejected
    yield pg, memory
    pg.close()
    memory.close()


def test_v11_access_history_on_postgres_equals_in_memory(engines: tuple[Engine, Engine]) -> None:
    pg, memory = engines
    for thread in ("mb1:t1", "mb1:t2", "mb2:t9"):
        got = audit.thread_access_history(pg, "acme", "ada", thread)
        assert got == audit.thread_access_history(memory, "acme", "ada", thread)
        for minute in (5, 12, 19, len(STORY)):
            at = T0 + timedelta(minutes=minute, seconds=30)
            assert audit.thread_access(pg, "acme", "ada", thread, at=at) == \
                audit.thread_access(memory, "acme", "ada", thread, at=at)
    # leo was deleted last: his thread left every view, its history closes with his deletion
    leo = {e["user"]: e["intervals"] for e in audit.thread_access_history(pg, "acme", "ada",
                                                                          "mb2:t9")}
    assert leo["leo"][-1]["closed_by"]["type"] == "UserDeleted"
    assert leo["leo"][-1]["closed_rule"] == "L2"


def test_e4_thread_at_on_postgres_equals_in_memory(engines: tuple[Engine, Engine]) -> None:
    pg, memory = engines
    at = T0 + timedelta(minutes=14, seconds=30)
    for viewer in ("ada", "max", "mia", "leo"):
        for thread in ("mb1:t1", "mb1:t2", "mb2:t9"):
            try:
                want = memory.query_thread("acme", viewer, thread, at=at)
            except NotFound:
                with pytest.raises(NotFound):
                    pg.query_thread("acme", viewer, thread, at=at)
                continue
            assert pg.query_thread("acme", viewer, thread, at=at) == want


def test_v12_unknown_thread_on_postgres_is_not_found(engines: tuple[Engine, Engine]) -> None:
    pg, _ = engines
    with pytest.raises(NotFound):
        audit.thread_access_history(pg, "acme", "ada", "mb1:nope")
    with pytest.raises(NotFound):
        audit.thread_access(pg, "acme", "mia", "mb1:t1")


def test_v11_index_selection_on_postgres_equals_filtered_scan(
        engines: tuple[Engine, Engine]) -> None:
    pg, _ = engines
    store = pg.stores().events
    for thread, mailbox in (("mb1:t1", "mb1"), ("mb1:t2", "mb1"), ("mb2:t9", "mb2"),
                            ("mb1:none", "mb1")):
        found = ThreadScope(thread, mailbox).selection()
        assert found is not None
        selected = list(scan_selected(store, "acme", ThreadScope(thread, mailbox).keep_stored,
                                      Selection(*found)))
        scanned = list(scan_tenant(store, "acme", ThreadScope(thread, mailbox).keep_stored))
        assert selected == scanned, thread
        # the thread's own messages are there, the other threads' are not
        threads = {e.thread for _, e in selected if isinstance(e, ev.MessageSynced)}
        assert threads == ({thread} if thread != "mb1:none" else set())
