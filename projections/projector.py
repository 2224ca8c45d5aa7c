"""Turns logged events into view changes, in batches, and keeps the views caught up.

The projector folds every event into per-tenant state (the same `evolve` as the command side) and
rewrites only the keys an event touched. A batch's rows and every projection's new position are
written together; events a projection ignores still advance its position (SPEC E3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from domain.events import DomainEvent
from domain.state import TenantState, evolve
from projections.partition import Partition
from projections.ports import Changes, ViewStore
from projections.rows import PROJECTIONS, STATE_ROWS, Cache, Rows, creates_message, event_rows
from projections.touched import GROUPED, Keys, key_groups, thread_keys, touched

assert set(STATE_ROWS) <= GROUPED, "touched.key_groups must list every state-derived projection"


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

    def __init__(self, names: Iterable[str] = PROJECTIONS,
                 partition: Partition | None = None) -> None:
        self.names = list(names)
        self.partition = partition  # one part of a build partitioned by mailbox, else all
        self.states: dict[str, TenantState] = {}
        self.position = 0

    def reset(self) -> None:
        """Forget everything folded so far (the next catch-up starts from the beginning)."""
        self.states = {}
        self.position = 0

    def process(self, batch: Sequence[Logged], positions: dict[str, int]) -> Changes:
        """Fold the batch; return the complete rows of every key it may have changed.

        A thread's keys are taken when the batch first touches it (before the event) and again
        at the end, so a record that stops being linked loses its row.
        """
        dirty: dict[str, dict[str, set[str]]] = {p: {} for p in self.names}
        threads: dict[str, dict[str, Keys]] = {}  # tenant -> thread -> keys when first touched
        direct: dict[str, dict[str, Rows]] = {}  # tenant -> message rows written by events
        everyone = frozenset(self.names)
        behind = max((positions.get(p, 0) for p in self.names), default=0)
        for item in batch:
            if item.position <= self.position:
                continue
            state = self.states.get(item.event.tenant)
            if state is None:
                state = self.states[item.event.tenant] = TenantState(item.event.tenant,
                                                                      index_rfc=False)
            event = self._admit(state, item.event)
            if event is None:
                self.position = item.position
                continue
            writing = everyone if item.position > behind else frozenset(
                p for p in self.names if item.position > positions.get(p, 0))
            if not writing:
                evolve(state, event, item.seq)
                self.position = item.position
                continue
            seen = threads.setdefault(event.tenant, {})
            keys, touched_threads = touched(state, event)
            for tid in touched_threads:
                if tid not in seen:
                    seen[tid] = thread_keys(state, tid)
            evolve(state, event, item.seq)
            self.position = item.position
            after, touched_threads = touched(state, event)
            for tid in touched_threads:
                if tid not in seen:
                    # found only after the event: the event added it or its links, so the keys
                    # it has now include every key it had before
                    seen[tid] = thread_keys(state, tid)
            if "message" in writing:
                direct.setdefault(event.tenant, {}).update(event_rows(state, event))
            for found in (keys, after):
                for p, ks in found.items():
                    if p in writing:
                        dirty[p].setdefault(event.tenant, set()).update(ks)
        for tenant, seen in threads.items():
            state = self.states[tenant]
            for tid, first in seen.items():
                for found in (first, thread_keys(state, tid)):
                    for p, ks in found.items():
                        if p in dirty and ks:
                            dirty[p].setdefault(tenant, set()).update(ks)
        changes: Changes = {}
        for tenant in {t for per in dirty.values() for t in per}:
            state = self.states[tenant]
            cache: Cache = {}
            for p, per_tenant in dirty.items():
                for key in sorted(per_tenant.get(tenant, ())):
                    if self.partition is None or self.partition.owns_key(p, key):
                        changes.setdefault(p, {})[(tenant, key)] = STATE_ROWS[p](state, key,
                                                                                 cache)
        for tenant, keyed in direct.items():
            for key, rows in keyed.items():
                changes.setdefault("message", {})[(tenant, key)] = rows
        return changes


    def _admit(self, state: TenantState, event: DomainEvent) -> DomainEvent | None:
        return event if self.partition is None else self.partition.admit(state, event)

    def fold(self, batch: Sequence[Logged]) -> tuple[dict[tuple[str, str], Rows],
                                                     dict[tuple[str, str], Rows]]:
        """Fold the batch without computing state rows (a build writes those once, at the end);
        return the `message` rows its events write when that projection is built: those of keys
        written for the first time since the log's start (no rows to replace), and the others."""
        created: dict[tuple[str, str], Rows] = {}
        changed: dict[tuple[str, str], Rows] = {}
        messages = "message" in self.names
        states = self.states
        for item in batch:
            if item.position <= self.position:
                continue
            state = states.get(item.event.tenant)
            if state is None:
                state = states[item.event.tenant] = TenantState(item.event.tenant,
                                                                 index_rfc=False)
            event = self._admit(state, item.event)
            if event is None:
                self.position = item.position
                continue
            first = messages and creates_message(state, event)
            evolve(state, event, item.seq)
            self.position = item.position
            if messages:
                for key, rows in event_rows(state, event).items():
                    if first:
                        created[(event.tenant, key)] = rows
                    else:
                        created.pop((event.tenant, key), None)
                        changed[(event.tenant, key)] = rows
        return created, changed

    def final_changes(self, chunk: int = 2000) -> Iterator[Changes]:
        """The rows of every key of the state-derived projections, from the folded states, in
        chunks of about `chunk` keys."""
        names = [p for p in self.names if p in STATE_ROWS]
        part = self.partition
        changes: Changes = {}
        count = 0
        for tenant, state in self.states.items():
            for group in key_groups(state):
                cache: Cache = {}
                for p in names:
                    for key in group.get(p, ()):
                        if part is not None and not part.owns_key(p, key):
                            continue
                        rows = STATE_ROWS[p](state, key, cache)
                        if rows:
                            changes.setdefault(p, {})[(tenant, key)] = rows
                            count += 1
                            if count >= chunk:  # a group can be large (every record)
                                yield changes
                                changes, count = {}, 0
        if changes:
            yield changes


def _read(log: EventLog, projector: Projector, batch_size: int) -> tuple[Sequence[Logged], int]:
    """The next batch for `projector` and the last position read. A part of a partitioned
    build reads through the log's filter before decoding when it has one (`read_log_kept`);
    otherwise `Partition.admit` drops the other parts' events after decoding."""
    after = projector.position
    kept = getattr(log, "read_log_kept", None) if projector.partition is not None else None
    if kept is not None:
        assert projector.partition is not None
        batch, last = kept(after, batch_size, projector.partition.keeps)
        return batch, last
    batch = log.read_log(after, batch_size)
    return batch, batch[-1].position if batch else after


def build(log: EventLog, views: ViewStore, projector: Projector, *, batch_size: int = 1000,
          progress: Callable[[int, int], None] | None = None, target: int | None = None,
          set_positions: bool = True) -> int:
    """Build `projector`'s projections into views that hold none of their rows (after `reset`).

    Rows are a pure function of state (E3), so instead of rewriting every touched key batch by
    batch, a build folds the whole log first (streaming the `message` rows, which come from
    the events), then writes each key's rows once from the final state and sets the positions
    last. Same rows as incremental processing; a build that fails leaves positions at 0, so the
    views are reset and built again. The caller holds `views.exclusive()`. Returns the number
    of events read.

    A part of a partitioned build (`projector.partition`) builds up to the `target` position
    all parts share and leaves the positions to its coordinator (`set_positions=False`).
    """
    positions = views.positions()
    if any(positions.get(p, 0) for p in projector.names):
        raise ValueError("a build needs views reset to position 0")
    projector.reset()
    if target is None:
        target = log.max_position()
    read = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-writer") as writer:
        pending: Future[None] | None = None

        def write(changes: Changes, advanced: dict[str, int], fresh: bool = False) -> None:
            nonlocal pending
            if pending is not None:
                pending.result()  # re-raises the writer's failure
            pending = writer.submit(views.write, changes, advanced, fresh=fresh)

        while projector.position < target:
            batch, last = _read(log, projector, min(batch_size, target - projector.position))
            if last <= projector.position:
                break
            created, changed = projector.fold(batch)
            projector.position = last
            if created:
                write({"message": created}, {}, fresh=True)
            if changed:
                write({"message": changed}, {})
            read += len(batch)
            if progress is not None:
                progress(projector.position, target)
        for changes in projector.final_changes():  # each key once, into empty tables
            write(changes, {}, fresh=True)
        if set_positions:
            write({}, {p: projector.position for p in projector.names})
        if pending is not None:
            pending.result()
    return read


def extend(log: EventLog, views: ViewStore, projector: Projector, end: int, *,
           batch_size: int = 1000) -> int:
    """Process the events after the projector's position up to `end` into `views`, leaving
    the positions alone: a part of a partitioned build catching up before its coordinator
    sets the positions and swaps the tables in. Returns the number of events read."""
    read = 0
    while projector.position < end:
        batch, last = _read(log, projector, min(batch_size, end - projector.position))
        if last <= projector.position:
            break
        changes = projector.process(batch, {p: projector.position for p in projector.names})
        projector.position = last
        if changes:
            views.write(changes, {})
        read += len(batch)
    return read


def catch_up(log: EventLog, views: ViewStore, projector: Projector, *, batch_size: int = 1000,
             progress: Callable[[int, int], None] | None = None) -> int:
    """Process every event not yet in the views. Returns the number of events read."""
    with views.exclusive():
        return _catch_up(log, views, projector, batch_size, progress)


def _catch_up(log: EventLog, views: ViewStore, projector: Projector, batch_size: int,
              progress: Callable[[int, int], None] | None) -> int:
    positions = views.positions()
    if any(positions.get(p, 0) < projector.position for p in projector.names):
        # the views went back (reset, swapped, restored): fold the log again from the start
        projector.reset()
    target = log.max_position()
    if target - projector.position <= batch_size:
        return _batches(log, views, projector, batch_size, progress, positions, target, None)
    # Many batches: write batch N in a thread while batch N+1 is read and folded. Writes keep
    # their order and each is one transaction with its positions; if one fails, the projector is
    # ahead of the stored positions and the next catch-up starts it again from the beginning.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-writer") as writer:
        return _batches(log, views, projector, batch_size, progress, positions, target, writer)


def _batches(log: EventLog, views: ViewStore, projector: Projector, batch_size: int,
             progress: Callable[[int, int], None] | None, positions: dict[str, int],
             target: int, writer: ThreadPoolExecutor | None) -> int:
    read = 0
    pending: Future[None] | None = None
    while projector.position < target:
        batch = log.read_log(projector.position, batch_size)
        if not batch:
            break
        changes = projector.process(batch, positions)
        last = batch[-1].position
        advanced = {p: last for p in projector.names if positions.get(p, 0) < last}
        if advanced:
            if writer is None:
                views.write(changes, advanced)
            else:
                if pending is not None:
                    pending.result()  # re-raises the writer's failure
                pending = writer.submit(views.write, changes, advanced)
            positions.update(advanced)
        read += len(batch)
        if progress is not None:
            progress(projector.position, target)
    if pending is not None:
        pending.result()
    return read


@dataclass(frozen=True)
class _Replayed:
    position: int
    seq: int
    event: DomainEvent


class ReplayLog:
    """An EventLog over events already in hand (one tenant's stream up to a domain time)."""

    def __init__(self, events: Iterable[tuple[int, DomainEvent]]) -> None:
        self.items = [_Replayed(i, seq, e) for i, (seq, e) in enumerate(events, 1)]

    def max_position(self) -> int:
        return len(self.items)

    def read_log(self, after: int, limit: int) -> Sequence[Logged]:
        return self.items[after:after + limit]
