"""E4: a thread or explain question `--at` a past time is answered from the views' histories
(runners.services.audit.thread_views, projections.history). It must give exactly what a replay of
all of the tenant's views gives (`runners.services.engine.replayed`), for every viewer and every
minute: with deletions at the provider, the L5 guard, marks and links across mailboxes, an unmark, a
user's deletion, and on seeded random histories."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from audit_story import STORY
from histories import T0, history

from domain.errors import NotFound
from projections import queries
from runners.services.audit import thread_views
from runners.services.engine import Engine, replayed


def _apply(commands: list[dict[str, Any]]) -> Engine:
    engine = Engine.open_in_memory()
    lines = [json.dumps({"tenant": "acme", "at": (T0 + timedelta(minutes=i)).isoformat(), **c})
             for i, c in enumerate(commands)]
    engine.apply_lines(lines, now=T0 + timedelta(minutes=len(commands)))
    return engine


def _answer(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except NotFound:
        return "NotFound"


def _compare(engine: Engine, length: int, threads: list[str], users: list[str]) -> int:
    compared = 0
    for minute in range(length + 1):
        at = T0 + timedelta(minutes=minute, seconds=30)
        # every view of the tenant, replayed
        reference = replayed(engine.stores().events, "acme", at)
        for thread in threads:
            try:
                folded = thread_views(engine, "acme", thread, at)
            except NotFound:
                folded = None
            for viewer in users:
                for query in (queries.thread, queries.explain):
                    want = _answer(query, reference, "acme", viewer, thread)
                    got = "NotFound" if folded is None else _answer(query, folded, "acme",
                                                                     viewer, thread)
                    assert got == want, f"{query.__name__}({viewer}, {thread}) at {at}"
                    compared += want != "NotFound"
    return compared


def test_e4_thread_fold_answers_as_the_full_replay_with_deletions_and_marks() -> None:
    engine = _apply(STORY)
    threads = ["mb1:t1", "mb1:t2", "mb2:t9", "mb1:nope"]
    compared = _compare(engine, len(STORY), threads, ["ada", "max", "mia", "leo", "ghost"])
    assert compared > 100  # answers that showed a thread, not only "not found"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_e4_thread_fold_answers_as_the_full_replay_on_random_histories(seed: int) -> None:
    commands = history(seed, length=60)
    engine = _apply(commands)
    state = engine.state("acme")
    users = sorted(state.users)
    threads = sorted(state.threads)
    assert threads
    _compare(engine, len(commands), threads, users)


def test_e4_thread_fold_at_a_time_before_the_thread_is_not_found() -> None:
    engine = _apply(STORY)
    early: datetime = T0 + timedelta(minutes=1)
    with pytest.raises(NotFound):
        engine.query_thread("acme", "mia", "mb1:t1", at=early)
    assert engine.query_thread("acme", "mia", "mb1:t1",
                               at=T0 + timedelta(minutes=9))["messages"][0]["body"] == "body a1"
