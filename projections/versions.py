"""A tenant's rows per domain time: the keys a time group touched, and their history versions.

The projector groups a tenant's events by domain time; after the *last* event of a time, the
rows of every key the group touched are computed: they are the live rows and the key's version
at that time (projections.history), unless equal to the key's last version. The rows of a
thread's keys come from one `thread_facts` per thread and time (its links, owner, ordered
messages and bases computed once), which also names the thread's keys after the group
(docs/decisions/audit-and-erasure.md, "Cost of the histories in a build").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from domain.events import DomainEvent
from domain.state import TenantState, evolve
from projections.history import HISTORIES, moment
from projections.partition import Partition
from projections.ports import Changes, encode_doc, unstorable_keys
from projections.rows import STATE_ROWS, Cache, Rows, event_rows, thread_facts
from projections.thread_memo import ThreadMemo
from projections.touched import Keys, keys_of_thread, thread_keys, touched

First = tuple[int, int]  # (log position, tenant seq) of an event
_MEMO = 100_000  # keys whose last version is remembered (to skip versions that change nothing)


class Logged(Protocol):
    @property
    def position(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> DomainEvent: ...


@dataclass
class Group:
    """What a tenant's events of one domain time may have changed (rows computed at its end)."""

    at: datetime
    first: First  # its first event
    dirty: dict[str, set[str]] = field(default_factory=dict)  # projection -> keys
    threads: dict[str, Keys] = field(default_factory=dict)  # thread -> keys when first touched
    direct: dict[str, Rows] = field(default_factory=dict)  # message rows written by events


class Versions:
    """Each tenant's pending time group, the rows and versions computed from the groups (`out`,
    handed to the store by the caller) and each key's last version (`memo`)."""

    def __init__(self, names: list[str], partition: Partition | None) -> None:
        self.names = names
        self.partition = partition
        self.groups: dict[str, Group] = {}  # tenant -> its events of one time not yet computed
        self.out: Changes = {}  # rows and versions computed, not yet handed to the store
        # (projection, tenant, key) -> digest of its last version
        self.memo: dict[tuple[str, str, str], bytes] = {}
        self.threads = ThreadMemo()  # each thread's messages and keys at its last time's end

    def reset(self) -> None:
        self.groups, self.out, self.memo = {}, {}, {}
        self.threads.reset()

    def forget(self, tenant: str) -> None:
        """Forget the tenant's last versions: rows computed for it may not have been stored."""
        self.threads.forget(tenant)
        for mark in [m for m in self.memo if m[1] == tenant]:
            del self.memo[mark]

    def take_out(self) -> Changes:
        out, self.out = self.out, {}
        return out

    def collect(self, state: TenantState, item: Logged, event: DomainEvent,
                writing: frozenset[str]) -> dict[str, Rows]:
        """Fold the event, noting in its tenant's group the keys it may change; returns the
        `message` rows it writes.

        A thread's keys are taken when a time group first touches it (before the event) and
        again at the group's end, so a record that stops being linked loses its row."""
        group = self.groups.get(event.tenant)
        if group is None:
            group = self.groups[event.tenant] = Group(event.occurred_at,
                                                      (item.position, item.seq))
        seen = group.threads
        carried = self.threads
        mine = carried.start(state)
        new = carried.new_message(state, event)
        keys, touched_threads = touched(state, event)
        for tid in touched_threads:
            if tid not in seen:
                seen[tid] = carried.keys_before(mine, tid) or thread_keys(state, tid)
        evolve(state, event, item.seq)
        carried.folded(mine, state, event, new)
        after, touched_threads = touched(state, event)
        for tid in touched_threads:
            if tid not in seen:
                # found only after the event: the event added it or its links, so the keys
                # it has now include every key it had before
                seen[tid] = thread_keys(state, tid)
        direct = event_rows(state, event) if "message" in writing else {}
        group.direct.update(direct)
        dirty = group.dirty
        for found in (keys, after):
            for p, ks in found.items():
                if p in writing:
                    dirty.setdefault(p, set()).update(ks)
        return direct

    def flush(self, tenant: str, state: TenantState, live: bool = True) -> None:
        """The rows of every key the tenant's group touched, into `out`: the live rows (unless
        `live` is False: a build writes those from the final state) and a version of each
        key's history at the group's time. Raises when the rows cannot be computed or a key
        cannot be stored (the group is then dropped)."""
        group = self.groups.pop(tenant)
        names, part = self.names, self.partition
        dirty = group.dirty  # the group is done with: its sets are extended in place
        cache: Cache = {}
        carried = self.threads
        for tid, first in group.threads.items():
            facts = thread_facts(state, tid, cache, carried.ordered)  # keys now: from its links
            if facts is None:
                now = thread_keys(state, tid)
            else:
                now = keys_of_thread(tid, facts.owner, facts.links)
                carried.keep(state, tid, facts.messages, now)
            for found in (first, now):
                for p, ks in found.items():
                    if ks and p in names:
                        dirty.setdefault(p, set()).update(ks)
        changes: Changes = {}
        for p, keys in dirty.items():
            rows_of = STATE_ROWS.get(p)
            if rows_of is None:
                continue
            keyed = changes.setdefault(p, {})
            for key in sorted(keys):
                if part is None or part.owns_key(p, key):
                    keyed[(tenant, key)] = rows_of(state, key, cache)
        if group.direct:
            messages = changes.setdefault("message", {})
            for key, rows in group.direct.items():
                messages[(tenant, key)] = rows
        bad = unstorable_keys(changes)
        if bad is not None:
            raise bad
        at = moment(group.at)
        memo, out = self.memo, self.out
        for p, keyed in changes.items():
            if not keyed:
                continue
            if live:
                out.setdefault(p, {}).update(keyed)
            history = out.setdefault(HISTORIES[p], {})
            if p == "message":  # written by the events that change them: always new
                for tk, rows in keyed.items():
                    history.setdefault(tk, {})[at] = rows
                continue
            for (t, key), rows in keyed.items():
                mark = (p, t, key)
                # a digest, not the rows: the memo would otherwise keep 100k keys' rows alive
                digest = hashlib.blake2b(encode_doc(rows), digest_size=16).digest()
                if memo.get(mark) == digest:
                    continue  # the key's last version already says so
                if len(memo) >= _MEMO:
                    memo.clear()
                memo[mark] = digest
                history.setdefault((t, key), {})[at] = rows
