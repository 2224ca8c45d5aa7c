"""Turns logged events into view changes, in batches, and keeps the views caught up.

The projector folds every event into per-tenant state (the same `evolve` as the command side) and
rewrites only the keys an event touched. A batch's rows and every projection's new position are
written together; events a projection ignores still advance its position (SPEC E3).

One tenant's failure never stops the others (SPEC E8): when an event of tenant T cannot be
folded, its rows cannot be computed or they cannot be stored, T is *stuck* at that position
with the error (kept beside the positions, `ViewStore.stuck`), its state is folded again from
its own stream up to just before it, and its later events are held back, never applied out of
order, while every other tenant goes on. A projector retries its stuck tenants when it starts
(a runner or embedded process starting, a rebuild): their events from the stuck position on are
processed and written again; success clears the mark, a failure marks them stuck again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog

from domain.events import DomainEvent
from domain.state import TenantState, evolve
from projections.partition import Partition
from projections.ports import (
    Changes,
    Stuck,
    StuckChanges,
    UnstorableRow,
    ViewStore,
    unstorable_keys,
)
from projections.rows import PROJECTIONS
from projections.versions import First, Logged, Versions

__all__ = ["EventLog", "Logged", "Projector", "ReplayLog", "catch_up"]


class EventLog(Protocol):
    def max_position(self) -> int: ...

    def read_log(self, after: int, limit: int) -> Sequence[Logged]: ...


log = structlog.get_logger("crmsync.projections")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class Projector:
    """Folds events into tenant states and collects which keys of which projection changed.

    History (projections.history): a tenant's events are grouped by domain time; after the last
    event of a time, the rows of every key the group touched are computed and become the live
    rows and a version of the key's history at that time (unless equal to the key's last
    version). A catch-up computes rows after each time rather than once per batch; a build,
    which otherwise writes rows only once from the final state, computes them per time for the
    history too (docs/decisions/audit-and-erasure.md, "Views as of any time")."""

    def __init__(self, names: Iterable[str] = PROJECTIONS,
                 partition: Partition | None = None) -> None:
        self.names = list(names)
        self.partition = partition  # one part of a build partitioned by mailbox, else all
        self.states: dict[str, TenantState] = {}
        self.position = 0
        self.log: EventLog | None = None  # where a failed tenant's state is folded again from
        self.held: dict[str, int] = {}  # stuck tenant -> position its events are held from
        self.retrying: dict[str, dict[str, int]] = {}  # tenant -> projection -> stuck position
        self.unsaved: StuckChanges = {}  # stuck marks to write with the next batch
        self.loaded = False  # the store's stuck marks were read since the last reset
        self.first_seen: dict[str, First] = {}  # tenant -> its first event (builds)
        self.firsts: dict[str, First] = {}  # tenant -> its first event in the last batch
        self.row_failed: set[str] = set()  # tenants whose rows failed in a build
        # each tenant's time group, the rows and versions computed, each key's last version
        self.versions = Versions(self.names, partition)

    def reset(self) -> None:
        """Forget everything folded so far (the next catch-up starts from the beginning)."""
        self.states = {}
        self.position = 0
        self.held, self.retrying, self.unsaved, self.loaded = {}, {}, {}, False
        self.first_seen = {}
        self.row_failed = set()
        self.versions.reset()

    def load(self, stuck: Mapping[tuple[str, str], Stuck]) -> None:
        """Retry the tenants the store has stuck (this projector starts from the beginning)."""
        for (projection, tenant), mark in stuck.items():
            if projection in self.names:
                self.retrying.setdefault(tenant, {})[projection] = mark.position
        self.loaded = True

    def take_unsaved(self) -> StuckChanges:
        out, self.unsaved = self.unsaved, {}
        return out

    def fail(self, tenant: str, first: First, error: str) -> None:
        """Tenant `tenant` is stuck at `first` (position, seq): hold its events from there on
        and fold its state again from its own stream up to just before it."""
        position, seq = first
        self.held[tenant] = position
        self.retrying.pop(tenant, None)
        self.versions.forget(tenant)
        for p in self.names:
            self.unsaved[(p, tenant)] = Stuck(position, error)
        log.warning("tenant_stuck", tenant=tenant, position=position, error=error)
        self.states[tenant] = self._refold(tenant, seq)

    def _refold(self, tenant: str, before_seq: int) -> TenantState:
        state = TenantState(tenant, index_rfc=False)
        if self.log is None:
            return state
        events = getattr(self.log, "tenant_events", None)
        if events is not None:
            pairs: Iterable[tuple[int, DomainEvent]] = events(tenant)
        else:  # a log without streams (replays, fakes): scan it
            pairs = _scan(self.log, tenant, before_seq)
        for seq, event in pairs:
            if seq >= before_seq:
                break
            admitted = self.admit(state, event)
            if admitted is not None:
                evolve(state, admitted, seq)
        return state

    def resolved(self, last: int, positions: Mapping[str, int]) -> None:
        """Retried tenants that reached every position their projections had: no longer stuck."""
        for tenant in [t for t, per in self.retrying.items()
                       if all(last >= positions.get(p, 0) for p in per)]:
            for p in self.retrying.pop(tenant):
                self.unsaved[(p, tenant)] = None
            log.info("tenant_unstuck", tenant=tenant, position=last)

    def held_at(self, tenant: str, position: int) -> bool:
        hold = self.held.get(tenant)
        return hold is not None and position >= hold

    def process(self, batch: Sequence[Logged], positions: dict[str, int]) -> Changes:
        """Fold the batch; return the complete rows of every key it may have changed, and the
        versions of their histories (one per tenant and domain time).

        A thread's keys are taken when a time group first touches it (before the event) and
        again at the group's end, so a record that stops being linked loses its row.
        """
        everyone = frozenset(self.names)
        behind = max((positions.get(p, 0) for p in self.names), default=0)
        self.firsts = {}  # each tenant's first event in this batch
        failed: set[str] = set()  # tenants whose rows failed: narrowed below
        for item in batch:
            if item.position <= self.position:
                continue
            tenant = item.event.tenant
            if self.held and self.held_at(tenant, item.position):
                self.position = item.position  # stuck: held back until retried
                continue
            self.firsts.setdefault(tenant, (item.position, item.seq))
            if tenant in failed:
                self._fold_only(item)
                continue
            try:
                self._next_time(tenant, item)
            except Exception:
                failed.add(tenant)
                self._fold_only(item)
                continue
            try:
                self._one(item, positions, everyone, behind)
            except Exception as exc:
                self.fail(tenant, (item.position, item.seq),
                          f"event at position {item.position}: {describe(exc)}")
                self.position = item.position
                self.flush_before_failure(tenant, live=True)
        for tenant in list(self.versions.groups):
            try:
                self.flush(tenant)
            except Exception:
                failed.add(tenant)
        changes = self.versions.take_out()
        for tenant in failed:  # find the event after which its rows fail
            changes = without_tenants(changes, {tenant})
            self.versions.groups.pop(tenant, None)
            found = self._narrow(tenant, batch, positions, everyone, behind)
            for p, keyed in found.items():
                changes.setdefault(p, {}).update(keyed)
        for tenant in {t for per in changes.values() for t, _ in per}:
            if tenant in self.held and self.held[tenant] <= self.firsts[tenant][0]:
                changes = without_tenants(changes, {tenant})  # stuck before its first event here
        return changes

    def flush_before_failure(self, tenant: str, live: bool) -> None:
        """The tenant's group, on its state refolded to just before the event that failed: the
        rows of the events of its time before that one."""
        try:
            self.flush(tenant, live)
        except Exception:
            self.versions.groups.pop(tenant, None)

    def _fold_only(self, item: Logged) -> None:
        """Fold an event of a tenant whose rows are narrowed at the batch's end."""
        state = self._state(item.event.tenant)
        event = self.admit(state, item.event)
        if event is not None:
            evolve(state, event, item.seq)
        self.position = item.position

    def _next_time(self, tenant: str, item: Logged) -> None:
        """Compute the tenant's pending group when this event starts a later time."""
        group = self.versions.groups.get(tenant)
        if group is not None and group.at != item.event.occurred_at:
            self.flush(tenant)

    def _narrow(self, tenant: str, batch: Sequence[Logged], positions: dict[str, int],
                everyone: frozenset[str], behind: int) -> Changes:
        """The tenant's rows of the batch could not be computed or stored: fold its events of
        the batch again one by one from before the first, computing its rows after each; it
        is stuck at the first event after which they fail, and the rows before are returned.
        (Rare: a cost of one row computation per event of the tenant in the batch.)"""
        end, first = self.position, self.firsts[tenant]
        hold = self.held.get(tenant)
        items = [it for it in batch if it.event.tenant == tenant and it.position >= first[0]
                 and (hold is None or it.position < hold)]
        self.states[tenant] = self._refold(tenant, first[1])
        self.versions.forget(tenant)
        kept, self.versions.out = self.versions.out, {}
        for it in items:
            try:
                self._one(it, positions, everyone, behind)
                self.flush(tenant)  # after each event: a later one of its time overrides
                bad = unstorable_keys(self.versions.out)
                if bad is not None:
                    raise bad
            except Exception as exc:
                self.versions.groups.pop(tenant, None)
                self.fail(tenant, (it.position, it.seq),
                          f"rows of the event at position {it.position}: {describe(exc)}")
                break
        good, self.versions.out = self.versions.out, kept
        self.position = end
        return good

    def _state(self, tenant: str) -> TenantState:
        state = self.states.get(tenant)
        if state is None:
            state = self.states[tenant] = TenantState(tenant, index_rfc=False)
        return state

    def _one(self, item: Logged, positions: dict[str, int], everyone: frozenset[str],
             behind: int) -> None:
        """Fold one event and collect the keys it may have changed in its tenant's group."""
        state = self._state(item.event.tenant)
        event = self.admit(state, item.event)
        if event is None:
            self.position = item.position
            return
        writing = everyone if item.position > behind else frozenset(
            p for p in self.names if item.position > positions.get(p, 0))
        retry = self.retrying.get(event.tenant) if self.retrying else None
        if retry is not None:  # a stuck tenant retried: its events from there are written
            writing = writing | {p for p, at in retry.items() if item.position >= at}
        if not writing:
            evolve(state, event, item.seq)
            self.position = item.position
            return
        self.versions.collect(state, item, event, writing)
        self.position = item.position

    def flush(self, tenant: str, live: bool = True) -> None:
        self.versions.flush(tenant, self.states[tenant], live)

    def admit(self, state: TenantState, event: DomainEvent) -> DomainEvent | None:
        return event if self.partition is None else self.partition.admit(state, event)


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
    if not projector.loaded:  # starting: retry the stuck tenants (E8)
        stuck = views.stuck()
        if stuck and projector.position:
            projector.reset()  # restored from a snapshot: their events are folded from the start
        projector.load(stuck)
    projector.log = log
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
    pending: Future[list[Failed]] | None = None
    while projector.position < target:
        batch = log.read_log(projector.position, batch_size)
        if not batch:
            break
        changes = projector.process(batch, positions)
        firsts = dict(projector.firsts)
        last = batch[-1].position
        if pending is not None:  # the previous batch's write: a tenant whose rows could not
            changes = hold_failed(projector, pending.result(), changes)  # be stored is held
            pending = None
        advanced = {p: last for p in projector.names if positions.get(p, 0) < last}
        projector.resolved(last, positions)
        stuck = projector.take_unsaved()
        if advanced or changes or stuck:
            if writer is None:
                hold_failed(projector, write_batch(views, projector.names, changes, advanced, stuck,
                                          firsts), {})
            else:
                pending = writer.submit(write_batch, views, projector.names, changes, advanced,
                                        stuck, firsts)
            positions.update(advanced)
        read += len(batch)
        if progress is not None:
            progress(projector.position, target)
    if pending is not None:
        hold_failed(projector, pending.result(), {})
    return read


Failed = tuple[str, First, str]  # a tenant whose rows could not be stored, where, why


def write_batch(views: ViewStore, names: Sequence[str], changes: Changes,
           positions: Mapping[str, int], stuck: StuckChanges, firsts: Mapping[str, First],
           fresh: bool = False) -> list[Failed]:
    """Write a batch; when a tenant's row cannot be stored, that tenant is stuck at its first
    event of the batch (`firsts`) and the batch is written without it, in the same
    transaction as its stuck mark. Returns the tenants stuck so (the caller holds them)."""
    failed: list[Failed] = []
    while True:
        try:
            views.write(changes, positions, fresh=fresh, stuck=stuck)
            return failed
        except UnstorableRow as exc:
            first = firsts.get(exc.tenant)
            if first is None or any(t == exc.tenant for t, _, _ in failed):
                raise
            error = f"rows after position {first[0]}: {describe(exc)}"
            failed.append((exc.tenant, first, error))
            stuck = {**stuck, **{(p, exc.tenant): Stuck(first[0], error) for p in names}}
            changes = without_tenants(changes, {exc.tenant})


def without_tenants(changes: Changes, tenants: set[str]) -> Changes:
    if not tenants:
        return changes
    return {p: {tk: rows for tk, rows in keyed.items() if tk[0] not in tenants}
            for p, keyed in changes.items()}


def hold_failed(projector: Projector, failed: list[Failed], changes: Changes) -> Changes:
    """Hold the tenants a write could not store; drop them from the next batch's `changes`."""
    for tenant, first, error in failed:
        projector.fail(tenant, first, error)
        projector.versions.groups.pop(tenant, None)
    return without_tenants(changes, {tenant for tenant, _, _ in failed})


def _scan(log: EventLog, tenant: str, before_seq: int) -> Iterator[tuple[int, DomainEvent]]:
    """A tenant's events from a log without per-tenant streams, in order."""
    after = 0
    while True:
        batch = log.read_log(after, 1000)
        if not batch:
            return
        for item in batch:
            if item.event.tenant == tenant:
                if item.seq >= before_seq:
                    return
                yield item.seq, item.event
        after = batch[-1].position


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
