"""E3, E4, E5 on the in-memory engine: rebuild equals incremental, `--at` equals what was answered
live, and applying the same commands twice changes nothing."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import orjson
import pytest
from histories import history

from adapters.views.memory import MemoryViews
from domain.errors import NotFound
from projections.projector import Projector, catch_up
from projections.rows import PROJECTIONS
from runners.services.engine import Engine

TENANT = "acme"


def lines(commands: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(c) for c in commands]


def answers(engine: Engine, at: datetime | None = None) -> dict[str, Any]:
    """Every timeline, mailbox and thread answer for every user of the generated history."""
    out: dict[str, Any] = {}
    users = [f"u{i}" for i in range(5)]
    threads = sorted(f"mb{m}:{t}" for m in range(3) for t in ("t1", "t2", "t3"))
    for viewer in users:
        out[f"mailbox/{viewer}"] = engine.query_mailbox(TENANT, viewer, at=at)
        out[f"records/{viewer}"] = engine.query_records(TENANT, viewer, at=at)
        for record in ("c0", "l0", "d0", "c1", "l1", "d1"):
            try:
                out[f"timeline/{viewer}/{record}"] = engine.query_timeline(TENANT, viewer, record,
                                                                           at=at)
            except NotFound:
                out[f"timeline/{viewer}/{record}"] = "not found"
        for thread in threads:
            try:
                out[f"thread/{viewer}/{thread}"] = engine.query_thread(TENANT, viewer, thread,
                                                                       at=at)
            except NotFound:
                out[f"thread/{viewer}/{thread}"] = "not found"
    return out


@pytest.mark.parametrize("seed", range(6))
def test_e3_rebuild_equals_incremental_whatever_the_batches_and_restarts(seed: int) -> None:
    commands = history(seed)
    engine = Engine.open_in_memory()
    rng = random.Random(seed)
    position = 0
    while position < len(commands):  # incremental, in random chunks, with "restarts"
        step = rng.randint(1, 15)
        engine.apply_lines(lines(commands[position:position + step]))
        position += step
        if rng.random() < 0.3:
            engine.projector = Projector()  # a killed runner comes back with nothing in memory
    live = engine.checksums()

    log = engine.stores().events
    for order in (list(PROJECTIONS), list(reversed(PROJECTIONS))):
        scratch = MemoryViews()
        for name in order:  # projections rebuilt one by one, in either order, tiny batches
            catch_up(log, scratch, Projector([name]), batch_size=rng.randint(1, 50))
        assert {p: scratch.checksum(p) for p in PROJECTIONS} == live

    results = engine.verify()
    assert all(a == b for a, b in results.values()), results
    assert answers(engine)  # non-trivial: there is something to answer


def test_e3_a_view_that_differs_is_reported_by_verify() -> None:
    engine = Engine.open_in_memory()
    engine.apply_lines(lines(history(1, length=30)))
    engine.stores().views.write({"timeline": {(TENANT, "c0"): {"forged": {"thread": "x"}}}}, {})
    results = engine.verify()
    assert results["timeline"][0] != results["timeline"][1]
    assert results["mailbox"][0] == results["mailbox"][1]


@pytest.mark.parametrize("seed", range(3))
def test_e4_answers_at_a_past_time_equal_the_live_answers_then(seed: int) -> None:
    commands = history(seed, length=60)
    engine = Engine.open_in_memory()
    snapshots: list[tuple[datetime, dict[str, Any]]] = []
    for i, command in enumerate(commands):
        engine.apply_lines([orjson.dumps(command)])
        if i % 9 == 8 or i == len(commands) - 1:
            snapshots.append((datetime.fromisoformat(command["at"]), answers(engine)))
    assert len(snapshots) >= 5
    for at, live in snapshots:
        assert answers(engine, at=at) == live, at


def test_e5_applying_the_same_file_twice_with_command_ids_changes_nothing() -> None:
    commands = [{**c, "command_id": f"c-{i}"} for i, c in enumerate(history(4, length=50))]
    engine = Engine.open_in_memory()
    first = engine.apply_lines(lines(commands))
    before = answers(engine)
    checksums = engine.checksums()
    seq = engine.state(TENANT).seq
    second = engine.apply_lines(lines(commands))
    assert first.applied > 20
    assert second.applied == 0
    assert second.unchanged == first.applied + first.unchanged
    assert answers(engine) == before
    assert engine.checksums() == checksums
    # only audit records of the rejected lines were added, no state change
    assert engine.state(TENANT).seq - seq == len(second.rejected)


def test_e5_redelivered_provider_message_is_one_message() -> None:
    commands = history(2, length=10)
    sync = next(c for c in commands if c["cmd"] == "SyncMessage")
    engine = Engine.open_in_memory()
    engine.apply_lines(lines(commands))
    seq = engine.state(TENANT).seq
    report = engine.apply_lines(lines([{**sync, "at": "2027-01-01T00:00:00+00:00"}]))
    assert report.unchanged == 1
    assert engine.state(TENANT).seq == seq
