"""§8: callers get tenant positions; `EventStore.log_position` maps them back to the log's, the
same on every store (in memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.eventstore.store import EventStore
from adapters.views.memory import MemoryViews
from runners.services.engine import Engine

pytestmark = pytest.mark.integration


def users(tenant: str, count: int) -> list[str]:
    return [json.dumps({"tenant": tenant, "cmd": "AddUser", "user": f"u{i}",
                        "email": f"u{i}@{tenant}.test", "role": "member"}) for i in range(count)]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_s8_tenant_positions_map_to_the_log_positions(kind: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    if kind == "memory":
        store = EventStore.in_memory()
    elif kind == "sqlite":
        store = EventStore.sqlite(str(tmp_path / "events.db"))
    else:
        store = EventStore(request.getfixturevalue("postgres_env"))
    engine = Engine(store, MemoryViews())
    try:
        interleaved = [line for pair in zip(users("acme", 5), users("globex", 5), strict=True)
                       for line in pair] + users("acme", 8)[5:]
        report = engine.apply_lines(interleaved)
        assert report.applied == 13
        assert report.tenant_positions == {"acme": 8, "globex": 5}
        log = store.read_log(0, 100)
        assert len(log) == 13
        expected = {(e.event.tenant, e.seq): e.position for e in log}
        found = {(tenant, seq): store.log_position(tenant, seq)
                 for tenant, last in report.tenant_positions.items()
                 for seq in range(1, last + 1)}
        assert found == expected
        assert store.log_position("acme", 9) is None
        assert store.log_position("nobody", 1) is None
    finally:
        engine.close()
