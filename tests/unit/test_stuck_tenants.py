"""E8: one tenant's failure never stops another tenant's views (in memory: the projector's rules;
SQLite and PostgreSQL in tests/integration/test_stuck_tenants_stores.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from stuck_fixtures import inject, lead, lead_event, records, setup_tenant, unfoldable

from adapters.eventstore.store import EventStore
from adapters.views.memory import MemoryViews
from domain.errors import NotFound
from projections.ports import Changes, StuckChanges, UnstorableRow
from projections.projector import Projector
from projections.rows import PROJECTIONS
from runners.entrypoints.projection_runner import lag
from runners.services.engine import Engine

LATER = datetime(2100, 1, 1, tzinfo=UTC)


def stuck_at(engine: Engine) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for (_, tenant), mark in engine.stuck().items():
        out.setdefault(tenant, set()).add(mark.position)
    return out


def test_e8_a_tenant_whose_event_cannot_be_folded_is_stuck_and_the_others_go_on() -> None:
    engine = Engine.open_in_memory()
    setup_tenant(engine, "a", "lead-a1")
    setup_tenant(engine, "b", "lead-b1")
    bad = inject(engine, "a", unfoldable("a"), lead_event("a", "lead-a2"))
    lead(engine, "b", "lead-b2")  # applies, then catches the views up
    assert records(engine, "b") == {"lead-b1", "lead-b2"}
    assert records(engine, "a") == {"lead-a1"}  # what came before stays; later events wait
    assert stuck_at(engine) == {"a": {bad}}
    marks = engine.stuck()
    assert {p for p, _ in marks} == set(PROJECTIONS)
    assert "KeyError" in marks[("timeline", "a")].error
    assert str(bad) in marks[("timeline", "a")].error
    shown = lag(engine)
    assert all(v["lag"] == 0 for v in shown.values())
    assert all(v["stuck"] == [{"tenant": "a", "position": bad,
                               "error": marks[(p, "a")].error}] for p, v in shown.items())
    lead(engine, "b", "lead-b3")  # and keeps going
    assert records(engine, "b") == {"lead-b1", "lead-b2", "lead-b3"}


def test_e8_a_row_that_cannot_be_stored_sticks_its_tenant_only() -> None:
    engine = Engine.open_in_memory()
    setup_tenant(engine, "a", "lead-a1")
    setup_tenant(engine, "b", "lead-b1")
    bad = inject(engine, "a", lead_event("a", "x\x00y"), lead_event("a", "lead-a3"))
    lead(engine, "b", "lead-b2")
    assert records(engine, "b") == {"lead-b1", "lead-b2"}
    assert records(engine, "a") == {"lead-a1"}
    assert stuck_at(engine) == {"a": {bad}}
    assert "cannot be stored" in engine.stuck()[("directory", "a")].error


class Refusing(MemoryViews):
    """Views that cannot store tenant `a`'s rows while `refuse` is set (a store-side failure
    the operator then fixes)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    def write(self, changes: Changes, positions: Mapping[str, int], *, fresh: bool = False,
              stuck: StuckChanges | None = None) -> None:
        if self.refuse and any(t == "a" for keyed in changes.values() for t, _ in keyed):
            raise UnstorableRow("a", "directory", "refused by the test")
        super().write(changes, positions, fresh=fresh, stuck=stuck)


def test_e8_a_stuck_tenant_is_held_until_retried_on_start_then_cleared() -> None:
    views = Refusing()
    engine = Engine(EventStore.in_memory(), views)
    setup_tenant(engine, "b", "lead-b1")
    views.refuse = False
    engine.catch_up()
    views.refuse = True
    setup_tenant(engine, "a", "lead-a1")  # AddUser + CreateLead: stuck at the AddUser
    lead(engine, "b", "lead-b2")
    first_a = min(p for p in stuck_at(engine)["a"])
    assert stuck_at(engine) == {"a": {first_a}}
    assert engine.query_records("a", "ada") == []  # nothing of tenant a is in the views
    with pytest.raises(NotFound):
        engine.query_timeline("a", "ada", "lead-a1")
    views.refuse = False  # the operator fixed it; the running projector still holds a back
    lead(engine, "b", "lead-b3")
    assert stuck_at(engine) == {"a": {first_a}}
    engine.projector = Projector()  # a restart: stuck tenants are retried
    engine.catch_up()
    assert stuck_at(engine) == {}
    assert records(engine, "a") == {"lead-a1"}
    assert records(engine, "b") == {"lead-b1", "lead-b2", "lead-b3"}
    lead(engine, "a", "lead-a2")  # and it follows again
    assert records(engine, "a") == {"lead-a1", "lead-a2"}


def test_e8_a_retry_that_fails_again_keeps_the_tenant_stuck_and_the_others_going() -> None:
    engine = Engine.open_in_memory()
    setup_tenant(engine, "a", "lead-a1")
    setup_tenant(engine, "b", "lead-b1")
    bad = inject(engine, "a", unfoldable("a"))
    engine.catch_up()
    engine.projector = Projector()  # restart
    lead(engine, "b", "lead-b2")
    assert stuck_at(engine) == {"a": {bad}}
    assert records(engine, "b") == {"lead-b1", "lead-b2"}
    assert records(engine, "a") == {"lead-a1"}


def test_e8_rebuild_and_verify_go_past_a_stuck_tenant() -> None:
    engine = Engine.open_in_memory()
    setup_tenant(engine, "a", "lead-a1")
    setup_tenant(engine, "b", "lead-b1")
    bad = inject(engine, "a", unfoldable("a"), lead_event("a", "lead-a2"))
    lead(engine, "b", "lead-b2")
    engine.rebuild()
    assert stuck_at(engine) == {"a": {bad}}
    assert records(engine, "b") == {"lead-b1", "lead-b2"}
    assert records(engine, "a") == {"lead-a1"}
    sums = engine.verify()
    assert all(live == rebuilt for live, rebuilt in sums.values())


def test_e8_answers_at_a_past_time_skip_a_failing_event_too() -> None:
    engine = Engine.open_in_memory()
    setup_tenant(engine, "a", "lead-a1")
    inject(engine, "a", unfoldable("a"), lead_event("a", "lead-a2"))
    found = engine.query_records("a", "ada", at=LATER)
    assert {r["record"] for r in found} == {"lead-a1"}
