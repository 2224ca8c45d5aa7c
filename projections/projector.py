"""Turns logged events into view changes, in batches, and keeps the views caught up.

The projector folds every event into per-tenant state (the same `evolve` as the command side) and
rewrites only the keys an event touched. A batch's rows and every projection's new position are
written together; events a projection ignores still advance its position (SPEC E3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from domain.events import DomainEvent
from domain.state import TenantState, evolve
from projections.ports import Changes, ViewStore
from projections.rows import PROJECTIONS, Rows, all_keys
from projections.touched import touched


class Logged(Protocol):
    @property
    def position(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> DomainEvent: ...


class EventLog(Protocol):
    def max_position(self) -> int: ...

    def read_log(self, after: int, limit: int) -> Sequence[Logged]: ...


class Projector:
    """Folds events into tenant states and collects which keys of which projection changed."""

    def __init__(self, names: Iterable[str] = PROJECTIONS) -> None:
        self.names = list(names)
        self.states: dict[str, TenantState] = {}
        self.position = 0

    def process(self, batch: Sequence[Logged], positions: dict[str, int]) -> Changes:
        dirty: dict[str, dict[str, set[str]]] = {p: {} for p in self.names}
        for item in batch:
            if item.position <= self.position:
                continue
            event = item.event
            state = self.states.setdefault(event.tenant, TenantState(event.tenant))
            writing = [p for p in self.names if item.position > positions.get(p, 0)]
            before = touched(state, event) if writing else None
            evolve(state, event, item.seq)
            self.position = item.position
            if before is None:
                continue
            after = touched(state, event)
            for p in writing:
                keys = dirty[p].setdefault(event.tenant, set())
                keys |= before.keys(state, p) | after.keys(state, p)
        return {p: {(tenant, key): PROJECTIONS[p](self.states[tenant], key)
                    for tenant, keys in per_tenant.items() for key in sorted(keys)}
                for p, per_tenant in dirty.items() if per_tenant}


def catch_up(log: EventLog, views: ViewStore, projector: Projector, *, batch_size: int = 1000,
             progress: Callable[[int, int], None] | None = None) -> int:
    """Process every event not yet in the views. Returns the number of events read."""
    positions = views.positions()
    target = log.max_position()
    read = 0
    while projector.position < target:
        batch = log.read_log(projector.position, batch_size)
        if not batch:
            break
        changes = projector.process(batch, positions)
        last = batch[-1].position
        advanced = {p: last for p in projector.names if positions.get(p, 0) < last}
        if advanced:
            views.write(changes, advanced)
            positions.update(advanced)
        read += len(batch)
        if progress is not None:
            progress(projector.position, target)
    return read


class StateReader:
    """A ViewReader computed from tenant state on demand: answers `--at` queries by replay."""

    def __init__(self, states: dict[str, TenantState]) -> None:
        self.states = states

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        state = self.states.get(tenant)
        return PROJECTIONS[projection](state, key) if state is not None else {}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        state = self.states.get(tenant)
        if state is None:
            return {}
        out = {}
        for key in all_keys(state, projection):
            if key.startswith(prefix):
                rows = PROJECTIONS[projection](state, key)
                if rows:
                    out[key] = rows
        return out
