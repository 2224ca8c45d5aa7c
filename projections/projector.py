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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from domain.events import DomainEvent
from domain.state import TenantState, evolve
from projections.history import HISTORIES, moment
from projections.partition import Partition
from projections.ports import (
    Changes,
    Stuck,
    StuckChanges,
    UnstorableRow,
    ViewStore,
    unstorable_keys,
)
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


log = structlog.get_logger("crmsync.projections")
First = tuple[int, int]  # (log position, tenant seq) of an event


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class Group:
    """What a tenant's events of one domain time may have changed (rows computed at its end)."""

    at: datetime
    first: First  # its first event
    dirty: dict[str, set[str]] = field(default_factory=dict)  # projection -> keys
    threads: dict[str, Keys] = field(default_factory=dict)  # thread -> keys when first touched
    direct: dict[str, Rows] = field(default_factory=dict)  # message rows written by events


_MEMO = 100_000  # keys whose last version is remembered (to skip versions that change nothing)


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
        self.groups: dict[str, Group] = {}  # tenant -> its events of one time not yet computed
        self.out: Changes = {}  # rows and versions computed, not yet handed to the store
        self.memo: dict[tuple[str, str, str], Rows] = {}  # (projection, tenant, key) -> last

    def reset(self) -> None:
        """Forget everything folded so far (the next catch-up starts from the beginning)."""
        self.states = {}
        self.position = 0
        self.held, self.retrying, self.unsaved, self.loaded = {}, {}, {}, False
        self.first_seen = {}
        self.row_failed = set()
        self.groups, self.out, self.memo = {}, {}, {}

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
        self.forget_versions(tenant)
        for p in self.names:
            self.unsaved[(p, tenant)] = Stuck(position, error)
        log.warning("tenant_stuck", tenant=tenant, position=position, error=error)
        self.states[tenant] = self._refold(tenant, seq)

    def forget_versions(self, tenant: str) -> None:
        """Forget the tenant's last versions: rows computed for it may not have been stored."""
        for mark in [m for m in self.memo if m[1] == tenant]:
            del self.memo[mark]

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
            admitted = self._admit(state, event)
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

    def _held(self, tenant: str, position: int) -> bool:
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
            if self.held and self._held(tenant, item.position):
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
                self._flush_before_failure(tenant, live=True)
        for tenant in list(self.groups):
            try:
                self._flush(tenant)
            except Exception:
                failed.add(tenant)
        changes, self.out = self.out, {}
        for tenant in failed:  # find the event after which its rows fail
            changes = _without(changes, {tenant})
            self.groups.pop(tenant, None)
            found = self._narrow(tenant, batch, positions, everyone, behind)
            for p, keyed in found.items():
                changes.setdefault(p, {}).update(keyed)
        for tenant in {t for per in changes.values() for t, _ in per}:
            if tenant in self.held and self.held[tenant] <= self.firsts[tenant][0]:
                changes = _without(changes, {tenant})  # stuck before its first event here
        return changes

    def _flush_before_failure(self, tenant: str, live: bool) -> None:
        """The tenant's group, on its state refolded to just before the event that failed: the
        rows of the events of its time before that one."""
        try:
            self._flush(tenant, live)
        except Exception:
            self.groups.pop(tenant, None)

    def _fold_only(self, item: Logged) -> None:
        """Fold an event of a tenant whose rows are narrowed at the batch's end."""
        state = self._state(item.event.tenant)
        event = self._admit(state, item.event)
        if event is not None:
            evolve(state, event, item.seq)
        self.position = item.position

    def _next_time(self, tenant: str, item: Logged) -> None:
        """Compute the tenant's pending group when this event starts a later time."""
        group = self.groups.get(tenant)
        if group is not None and group.at != item.event.occurred_at:
            self._flush(tenant)

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
        self.forget_versions(tenant)
        kept, self.out = self.out, {}
        for it in items:
            try:
                self._one(it, positions, everyone, behind)
                self._flush(tenant)  # after each event: a later one of its time overrides
                bad = unstorable_keys(self.out)
                if bad is not None:
                    raise bad
            except Exception as exc:
                self.groups.pop(tenant, None)
                self.fail(tenant, (it.position, it.seq),
                          f"rows of the event at position {it.position}: {describe(exc)}")
                break
        good, self.out = self.out, kept
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
        event = self._admit(state, item.event)
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
        self._collect(state, item, event, writing)
        self.position = item.position

    def _collect(self, state: TenantState, item: Logged, event: DomainEvent,
                 writing: frozenset[str]) -> dict[str, Rows]:
        """Fold the event, noting in its tenant's group the keys it may change; returns the
        `message` rows it writes."""
        group = self.groups.get(event.tenant)
        if group is None:
            group = self.groups[event.tenant] = Group(event.occurred_at,
                                                      (item.position, item.seq))
        seen = group.threads
        keys, touched_threads = touched(state, event)
        for tid in touched_threads:
            if tid not in seen:
                seen[tid] = thread_keys(state, tid)
        evolve(state, event, item.seq)
        after, touched_threads = touched(state, event)
        for tid in touched_threads:
            if tid not in seen:
                # found only after the event: the event added it or its links, so the keys
                # it has now include every key it had before
                seen[tid] = thread_keys(state, tid)
        direct = event_rows(state, event) if "message" in writing else {}
        group.direct.update(direct)
        for found in (keys, after):
            for p, ks in found.items():
                if p in writing:
                    group.dirty.setdefault(p, set()).update(ks)
        return direct

    def _flush(self, tenant: str, live: bool = True) -> None:
        """The rows of every key the tenant's group touched, into `out`: the live rows (unless
        `live` is False: a build writes those from the final state) and a version of each
        key's history at the group's time. Raises when the rows cannot be computed or a key
        cannot be stored (the group is then dropped)."""
        group = self.groups.pop(tenant)
        state = self.states[tenant]
        dirty = {p: set(keys) for p, keys in group.dirty.items()}
        for tid, first in group.threads.items():
            for found in (first, thread_keys(state, tid)):
                for p, ks in found.items():
                    if ks and p in self.names:
                        dirty.setdefault(p, set()).update(ks)
        changes: Changes = {}
        cache: Cache = {}
        for p, keys in dirty.items():
            for key in sorted(keys):
                if p in STATE_ROWS and (self.partition is None
                                        or self.partition.owns_key(p, key)):
                    changes.setdefault(p, {})[(tenant, key)] = STATE_ROWS[p](state, key, cache)
        for key, rows in group.direct.items():
            changes.setdefault("message", {})[(tenant, key)] = rows
        bad = unstorable_keys(changes)
        if bad is not None:
            raise bad
        at = moment(group.at)
        memo = self.memo
        for p, keyed in changes.items():
            if live:
                self.out.setdefault(p, {}).update(keyed)
            history = self.out.setdefault(HISTORIES[p], {})
            if p == "message":  # written by the events that change them: always new
                for tk, rows in keyed.items():
                    history.setdefault(tk, {})[at] = rows
                continue
            for (t, key), rows in keyed.items():
                mark = (p, t, key)
                if mark in memo and memo[mark] == rows:
                    continue  # the key's last version already says so
                if len(memo) >= _MEMO:
                    memo.clear()
                memo[mark] = rows
                history.setdefault((t, key), {})[at] = rows

    def _admit(self, state: TenantState, event: DomainEvent) -> DomainEvent | None:
        return event if self.partition is None else self.partition.admit(state, event)

    def fold(self, batch: Sequence[Logged]) -> tuple[dict[tuple[str, str], Rows],
                                                     dict[tuple[str, str], Rows]]:
        """Fold the batch for a build: live state rows are written once, at the end, from the
        final state; the history's versions of each time are computed into `out` (a tenant's
        last time is computed by `flush_all`, as its events may go on in the next batch).
        Returns the live `message` rows its events write when that projection is built: those
        of keys written for the first time since the log's start (no rows to replace), and the
        others."""
        created: dict[tuple[str, str], Rows] = {}
        changed: dict[tuple[str, str], Rows] = {}
        messages = "message" in self.names
        everyone = frozenset(self.names)
        states = self.states
        for item in batch:
            if item.position <= self.position:
                continue
            tenant = item.event.tenant
            if self.held and self._held(tenant, item.position):
                self.position = item.position
                continue
            state = states.get(tenant)
            if state is None:
                state = states[tenant] = TenantState(tenant, index_rfc=False)
                self.first_seen[tenant] = (item.position, item.seq)
            group = self.groups.get(tenant)
            if group is not None and group.at != item.event.occurred_at:
                try:
                    self._flush(tenant, live=False)
                except Exception as exc:  # its rows: `build` processes it again event by event
                    self._rows_failed(tenant, exc)
                    states = self.states
                    self.position = item.position
                    continue
            try:
                event = self._admit(state, item.event)
                if event is None:
                    self.position = item.position
                    continue
                first = messages and creates_message(state, event)
                rows_of = self._collect(state, item, event, everyone)
            except Exception as exc:
                self.fail(tenant, (item.position, item.seq),
                          f"event at position {item.position}: {describe(exc)}")
                self._flush_before_failure(tenant, live=False)
                states = self.states
                self.position = item.position
                continue
            self.position = item.position
            for key, rows in rows_of.items():
                if first:
                    created[(tenant, key)] = rows
                else:
                    created.pop((tenant, key), None)
                    changed[(tenant, key)] = rows
        return created, changed

    def flush_all(self) -> None:
        """A build's last times of every tenant, into `out` (history versions only)."""
        for tenant in list(self.groups):
            try:
                self._flush(tenant, live=False)
            except Exception as exc:
                self._rows_failed(tenant, exc)

    def take_out(self) -> Changes:
        out, self.out = self.out, {}
        return out

    def _rows_failed(self, tenant: str, exc: Exception) -> None:
        """A build could not compute or store a tenant's rows: it is held from its first event
        and processed again event by event once the build is done (`build`, `_again`)."""
        self.groups.pop(tenant, None)
        self.out = _without(self.out, {tenant})
        self.fail(tenant, self.first_seen[tenant], f"rows: {describe(exc)}")
        self.row_failed.add(tenant)

    def final_changes(self, chunk: int = 2000) -> Iterator[Changes]:
        """The rows of every key of the state-derived projections, from the folded states, in
        chunks of about `chunk` keys."""
        names = [p for p in self.names if p in STATE_ROWS]
        part = self.partition
        changes: Changes = {}
        count = 0
        for tenant, state in list(self.states.items()):
            if tenant in self.held and self.held[tenant] <= self.first_seen[tenant][0]:
                continue  # stuck at its first event: nothing of it is written
            try:
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
            except Exception as exc:  # its rows: `build` processes it again event by event
                self._rows_failed(tenant, exc)
                for keyed in changes.values():
                    for tk in [tk for tk in keyed if tk[0] == tenant]:
                        del keyed[tk]
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
    projector.loaded = True  # nothing is stuck in empty views: every tenant is tried again
    projector.log = log
    if target is None:
        target = log.max_position()
    read = 0
    dropped: set[str] = set()  # tenants whose rows could not be stored: none written since
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-writer") as writer:
        pending: Future[list[Failed]] | None = None

        def settle() -> None:
            nonlocal pending
            if pending is not None:
                for tenant, first, error in pending.result():  # re-raises other failures
                    projector.fail(tenant, first, error)
                    projector.groups.pop(tenant, None)
                    dropped.add(tenant)
                pending = None

        def write(changes: Changes, advanced: dict[str, int], fresh: bool = False) -> None:
            nonlocal pending
            settle()
            pending = writer.submit(_write, views, projector.names, _without(changes, dropped),
                                    advanced, {}, projector.first_seen, fresh)

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
            versions = projector.take_out()
            if versions:
                write(versions, {}, fresh=True)
            read += len(batch)
            if progress is not None:
                progress(projector.position, target)
        projector.flush_all()
        versions = projector.take_out()
        if versions:
            write(versions, {}, fresh=True)
        for changes in projector.final_changes():  # each key once, into empty tables
            write(changes, {}, fresh=True)
        settle()
        if projector.row_failed or dropped:
            _again(log, views, projector, projector.row_failed | dropped, target, batch_size)
        stuck = projector.take_unsaved()
        if set_positions or stuck:
            views.write({}, {p: projector.position for p in projector.names}
                        if set_positions else {}, stuck=stuck)
    return read


def _again(log: EventLog, views: ViewStore, projector: Projector, tenants: set[str],
           target: int, batch_size: int) -> None:
    """Tenants whose rows failed in a build (none of them written since): process their events
    again batch by batch, as a catch-up would, so each is stuck at the event where its rows
    fail (not at its first) and its rows before that are written. Reads the log once more."""
    sub = Projector(projector.names, projector.partition)
    sub.loaded, sub.log = True, log
    if projector.partition is None:  # parts share the tables: a part keeps what it wrote
        for tenant in tenants:
            views.forget_tenant(tenant, projector.names)
    items = list(_scan_tenants(log, tenants, target))
    start = {p: 0 for p in projector.names}
    for at in range(0, len(items), batch_size):
        changes = sub.process(items[at:at + batch_size], start)
        _settle(sub, _write(views, sub.names, changes, {}, {}, dict(sub.firsts)), {})
    marks = sub.take_unsaved()
    for tenant in tenants:
        projector.states[tenant] = sub.states.get(tenant) or TenantState(tenant, index_rfc=False)
        if tenant in sub.held:
            projector.held[tenant] = sub.held[tenant]
        else:
            projector.held.pop(tenant, None)
        for p in projector.names:
            projector.unsaved[(p, tenant)] = marks.get((p, tenant))
    projector.row_failed = set()


def _scan_tenants(log: EventLog, tenants: set[str], end: int) -> Iterator[Logged]:
    after = 0
    while after < end:
        batch = log.read_log(after, min(1000, end - after))
        if not batch:
            return
        yield from (item for item in batch if item.event.tenant in tenants)
        after = batch[-1].position


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
        projector.log = log
        changes = projector.process(batch, {p: projector.position for p in projector.names})
        projector.position = last
        stuck = projector.take_unsaved()
        if changes or stuck:
            views.write(changes, {}, stuck=stuck)
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
            changes = _settle(projector, pending.result(), changes)  # be stored is held
            pending = None
        advanced = {p: last for p in projector.names if positions.get(p, 0) < last}
        projector.resolved(last, positions)
        stuck = projector.take_unsaved()
        if advanced or changes or stuck:
            if writer is None:
                _settle(projector, _write(views, projector.names, changes, advanced, stuck,
                                          firsts), {})
            else:
                pending = writer.submit(_write, views, projector.names, changes, advanced,
                                        stuck, firsts)
            positions.update(advanced)
        read += len(batch)
        if progress is not None:
            progress(projector.position, target)
    if pending is not None:
        _settle(projector, pending.result(), {})
    return read


Failed = tuple[str, First, str]  # a tenant whose rows could not be stored, where, why


def _write(views: ViewStore, names: Sequence[str], changes: Changes,
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
            changes = _without(changes, {exc.tenant})


def _without(changes: Changes, tenants: set[str]) -> Changes:
    if not tenants:
        return changes
    return {p: {tk: rows for tk, rows in keyed.items() if tk[0] not in tenants}
            for p, keyed in changes.items()}


def _settle(projector: Projector, failed: list[Failed], changes: Changes) -> Changes:
    """Hold the tenants a write could not store; drop them from the next batch's `changes`."""
    for tenant, first, error in failed:
        projector.fail(tenant, first, error)
        projector.groups.pop(tenant, None)
    return _without(changes, {tenant for tenant, _, _ in failed})


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
