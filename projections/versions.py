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
from array import array
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
_WORD = (1 << 64) - 1


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
        self.memo = LastVersions()
        self.threads = ThreadMemo()  # each thread's messages and keys at its last time's end

    def reset(self) -> None:
        self.groups, self.out, self.memo = {}, {}, LastVersions()
        self.threads.reset()

    def forget(self, tenant: str) -> None:
        """Forget the tenant's last versions: rows computed for it may not have been stored."""
        self.threads.forget(tenant)
        self.memo.forget(tenant)

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
                if memo.same(t, p, key, rows):
                    continue  # the key's last version already says so
                history.setdefault((t, key), {})[at] = rows


class LastVersions:
    """A digest of each key's last history version, for up to `bound` keys (then all are
    forgotten: a version equal to a forgotten one is written again, which changes no answer).

    Numbers in an open-addressing table per tenant, not a dict of (projection, tenant, key)
    tuples to digest bytes: a key costs at most 32 bytes (16 a slot, at most half the slots
    used) instead of ~165 bytes of tuple, key string, bytes object and dict entry (16 MB at
    100,000 keys; docs/decisions/operations-and-scale.md, "Rebuild and runner memory"). A
    slot holds a 64-bit hash of (projection, key) and a 64-bit blake2b of the rows' canonical
    bytes: two keys of a tenant share a slot only if their hashes are equal (odds ~2^-64 a
    pair), a changed version is taken for the last one only if its digest is (~2^-64 a
    change)."""

    def __init__(self, bound: int = _MEMO) -> None:
        self.bound = bound
        self.count = 0  # keys remembered, over all tenants
        self.tables: dict[str, _Table] = {}  # tenant -> its keys' last versions

    def __len__(self) -> int:
        return self.count

    def same(self, tenant: str, projection: str, key: str, rows: Rows) -> bool:
        """Whether `rows` are the key's last version; if not, they become it."""
        table = self.tables.get(tenant)
        if table is None:
            table = self.tables[tenant] = _Table()
        tag = hash((projection, key)) & _WORD or 1  # 0 marks an empty slot
        digest = int.from_bytes(hashlib.blake2b(encode_doc(rows), digest_size=8).digest())
        before = table.swap(tag, digest)
        if before is not None:
            return before == digest
        self.count += 1
        if self.count > self.bound:  # full: start again from this key
            self.tables, self.count = {tenant: _Table()}, 1
            self.tables[tenant].swap(tag, digest)
        return False

    def forget(self, tenant: str) -> None:
        table = self.tables.pop(tenant, None)
        if table is not None:
            self.count -= table.used


class _Table:
    """Open addressing with linear probing in one array of numbers: slot i is (tag, digest) at
    2i and 2i + 1, tag 0 an empty slot; doubled when half full."""

    def __init__(self, size: int = 16) -> None:
        self.slots = array("Q", bytes(16 * size))
        self.mask = size - 1
        self.used = 0

    def swap(self, tag: int, digest: int) -> int | None:
        """Set the tag's digest; returns its previous one (None: the tag was not there)."""
        slots, mask = self.slots, self.mask
        i = tag & mask
        while True:
            found = slots[2 * i]
            if found == tag:
                before = slots[2 * i + 1]
                slots[2 * i + 1] = digest
                return before
            if not found:
                slots[2 * i], slots[2 * i + 1] = tag, digest
                self.used += 1
                if 2 * self.used > mask:
                    self._grow()
                return None
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self.slots
        self.slots = array("Q", bytes(32 * (self.mask + 1)))
        self.mask, self.used = 2 * self.mask + 1, 0
        for i in range(0, len(old), 2):
            if old[i]:
                self.swap(old[i], old[i + 1])
