"""A build: the whole log folded once, each key's live rows written once from the final state.

Rows are a pure function of state (E3), so instead of rewriting every touched key batch by
batch as a catch-up does, a build folds the whole log (streaming the `message` rows, which come
from the events, and the history's versions of each domain time, projections.versions), then
writes each key's live rows once from the final state. A part of a partitioned build
(projections.partition) builds its own keys and is extended to the end by `extend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from domain.state import TenantState
from projections.ports import Changes, ViewStore
from projections.projector import (
    EventLog,
    Failed,
    Logged,
    Projector,
    describe,
    hold_failed,
    without_tenants,
    write_batch,
)
from projections.rows import STATE_ROWS, Cache, Rows, creates_message, thread_facts
from projections.touched import GROUPED, Keys, keys_of_thread, state_keys, thread_keys

assert set(STATE_ROWS) <= GROUPED, "touched.GROUPED must list every state-derived projection"


def fold(projector: Projector, batch: Sequence[Logged]) -> tuple[dict[tuple[str, str], Rows],
                                                 dict[tuple[str, str], Rows]]:
    """Fold the batch for a build: live state rows are written once, at the end, from the
    final state; the history's versions of each time are computed into `out` (a tenant's
    last time is computed by `flush_all`, as its events may go on in the next batch).
    Returns the live `message` rows its events write when that projection is built: those
    of keys written for the first time since the log's start (no rows to replace), and the
    others."""
    created: dict[tuple[str, str], Rows] = {}
    changed: dict[tuple[str, str], Rows] = {}
    messages = "message" in projector.names
    everyone = frozenset(projector.names)
    states = projector.states
    for item in batch:
        if item.position <= projector.position:
            continue
        tenant = item.event.tenant
        if projector.held and projector.held_at(tenant, item.position):
            projector.position = item.position
            continue
        state = states.get(tenant)
        if state is None:
            state = states[tenant] = TenantState(tenant, index_rfc=False)
            projector.first_seen[tenant] = (item.position, item.seq)
        group = projector.versions.groups.get(tenant)
        if group is not None and group.at != item.event.occurred_at:
            try:
                projector.flush(tenant, live=False)
            except Exception as exc:  # its rows: `build` processes it again event by event
                _rows_failed(projector, tenant, exc)
                states = projector.states
                projector.position = item.position
                continue
        try:
            event = projector.admit(state, item.event)
            if event is None:
                projector.position = item.position
                continue
            first = messages and creates_message(state, event)
            rows_of = projector.versions.collect(state, item, event, everyone)
        except Exception as exc:
            projector.fail(tenant, (item.position, item.seq),
                      f"event at position {item.position}: {describe(exc)}")
            projector.flush_before_failure(tenant, live=False)
            states = projector.states
            projector.position = item.position
            continue
        projector.position = item.position
        for key, rows in rows_of.items():
            if first:
                created[(tenant, key)] = rows
            else:
                created.pop((tenant, key), None)
                changed[(tenant, key)] = rows
    return created, changed

def flush_all(projector: Projector) -> None:
    """A build's last times of every tenant, into `out` (history versions only)."""
    for tenant in list(projector.versions.groups):
        try:
            projector.flush(tenant, live=False)
        except Exception as exc:
            _rows_failed(projector, tenant, exc)

def _rows_failed(projector: Projector, tenant: str, exc: Exception) -> None:
    """A build could not compute or store a tenant's rows: it is held from its first event
    and processed again event by event once the build is done (`build`, `_again`)."""
    projector.versions.groups.pop(tenant, None)
    projector.versions.out = without_tenants(projector.versions.out, {tenant})
    projector.fail(tenant, projector.first_seen[tenant], f"rows: {describe(exc)}")
    projector.row_failed.add(tenant)

def final_changes(projector: Projector, chunk: int = 2000) -> Iterator[Changes]:
    """The rows of every key of the state-derived projections, from the folded states, in
    chunks of about `chunk` keys."""
    names = [p for p in projector.names if p in STATE_ROWS]
    part = projector.partition
    changes: Changes = {}
    count = 0
    for tenant, state in list(projector.states.items()):
        if tenant in projector.held and projector.held[tenant] <= projector.first_seen[tenant][0]:
            continue  # stuck at its first event: nothing of it is written
        try:
            for group, cache in _final_groups(state):
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
            _rows_failed(projector, tenant, exc)
            for keyed in changes.values():
                for tk in [tk for tk in keyed if tk[0] == tenant]:
                    del keyed[tk]
    if changes:
        yield changes


def _final_groups(state: TenantState) -> Iterator[tuple[Keys, Cache]]:
    """Every key of every state-derived projection that may have rows now, in groups whose rows
    share cached facts (one group per thread, its keys from its facts' links). A generator: a
    tenant's keys are never all held at once."""
    yield state_keys(state), {}
    for tid in state.threads:
        cache: Cache = {}
        facts = thread_facts(state, tid, cache)
        yield (thread_keys(state, tid) if facts is None
               else keys_of_thread(tid, facts.owner, facts.links)), cache


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
                    projector.versions.groups.pop(tenant, None)
                    dropped.add(tenant)
                pending = None

        def write(changes: Changes, advanced: dict[str, int], fresh: bool = False) -> None:
            nonlocal pending
            settle()
            pending = writer.submit(write_batch, views, projector.names,
                                    without_tenants(changes, dropped), advanced, {},
                                    projector.first_seen, fresh)

        # `message` rows written for the first time, held until the versions of their time
        # are written, in the same batch: a message's live row and its version are the same
        # row, so the store seals it once (adapters.views.seal). The versions' group holds
        # these rows until then anyway.
        held: dict[tuple[str, str], Rows] = {}
        while projector.position < target:
            batch, last = _read(log, projector, min(batch_size, target - projector.position))
            if last <= projector.position:
                break
            created, changed = fold(projector, batch)
            projector.position = last
            held.update(created)
            for tk in [tk for tk in changed if tk in held]:  # not written yet: still fresh
                held[tk] = changed.pop(tk)
            if changed:
                write({"message": changed}, {})
            versions = projector.versions.take_out()
            if versions:
                write({"message": held, **versions} if held else versions, {}, fresh=True)
                held = {}
            read += len(batch)
            if progress is not None:
                progress(projector.position, target)
        flush_all(projector)
        versions = projector.versions.take_out()
        if versions or held:
            write({"message": held, **versions} if held else versions, {}, fresh=True)
        for changes in final_changes(projector):  # each key once, into empty tables
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
        hold_failed(sub, write_batch(views, sub.names, changes, {}, {}, dict(sub.firsts)), {})
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
