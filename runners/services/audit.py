"""Auditor queries (SPEC §7): who could see a thread at a time, and when, for admins only.

Composition: the asker is checked on the live views (E4: their current status and role decide
whether they may ask; anyone but an active admin gets NotFound, V12), then one tenant's stream is
read once, skipping what the thread's visibility cannot depend on (`projections.access`): on
PostgreSQL only the thread's own events and the tenant-wide ones are read, by index. Then they
are folded for that one thread. No replay of the tenant's views, no per-user replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from adapters.eventstore.scan import Selection, Stored, read_selected, scan_selected
from domain import events as ev
from domain.errors import NotFound
from domain.tenant import addresses
from projections import queries
from projections.access import (
    THREAD_WRITERS,
    AccessHistory,
    ThreadScope,
    access_answer,
    fold_until,
)
from projections.access_records import (
    ENTANGLING,
    RECORD_EVENTS,
    names,
    names_of_stored,
    related,
)
from projections.ports import ViewReader

if TYPE_CHECKING:
    from runners.services.engine import Engine


def require_admin(engine: Engine, tenant: str, viewer: str) -> None:
    """NotFound unless `viewer` is an active admin of `tenant` now."""
    user = queries.Lookup(engine.reader(tenant), tenant).user(viewer)
    if user is None or user["status"] != "active" or user["role"] != "admin":
        raise NotFound()


def _mailbox_of(engine: Engine, tenant: str, thread: str) -> str:
    """The thread's mailbox: from its live row, else (a thread no view shows any more: owner
    deleted, every message deleted) from the first event that wrote to it. NotFound if none."""
    row = engine.committed_views().rows("thread", tenant, thread).get("t")
    if row is not None:
        return str(row["mailbox"])
    needle = orjson.dumps({"thread": thread})[1:-1]

    def keep(kind: type[ev.DomainEvent], state: bytes) -> bool:
        return kind in THREAD_WRITERS and needle in state

    writers = Selection(frozenset(), frozenset(), b"", THREAD_WRITERS, thread)
    for _, event in scan_selected(engine.stores().events, tenant, keep, writers):
        if isinstance(event, ev.MessageSynced | ev.EmailSent) and event.thread == thread:
            return event.mailbox
    raise NotFound()


def _scope(engine: Engine, tenant: str, viewer: str, thread: str) -> ThreadScope:
    require_admin(engine, tenant, viewer)
    return ThreadScope(thread, _mailbox_of(engine, tenant, thread))


def _names(item: Stored) -> set[str]:
    found = names_of_stored(item.state) if item.state is not None else None
    return found if found is not None else names(item.payload())


def _events(engine: Engine, tenant: str, scope: ThreadScope
            ) -> Iterator[tuple[int, ev.DomainEvent]]:
    """The events the scope keeps, less the record events of records that could never be
    linked to the thread (`projections.access_records`): on PostgreSQL read by index (the
    thread's own events and the tenant-wide ones), elsewhere a scan that skips the rest before
    decoding. Record events are left out before they are decoded."""
    found = scope.selection()
    items = list(read_selected(engine.stores().events, tenant, scope.keep_stored,
                               Selection(*found) if found is not None else None))
    dropped: set[int] = set()
    if scope.mailbox is not None and not any(i.kind in ENTANGLING for i in items):
        seeds = {scope.thread}
        for item in items:
            if item.kind in THREAD_WRITERS:
                event = item.event()
                if isinstance(event, ev.MessageSynced | ev.EmailSent) \
                        and event.thread == scope.thread:
                    msg = event.message
                    seeds.update(addresses([msg.from_, *msg.to, *msg.cc, *msg.bcc]))
        records = [i for i, item in enumerate(items) if item.kind in RECORD_EVENTS]
        kept = related(seeds, [_names(items[i]) for i in records])
        dropped = {i for i, keep in zip(records, kept, strict=True) if not keep}
    return ((item.seq, item.event()) for i, item in enumerate(items) if i not in dropped)


def thread_access(engine: Engine, tenant: str, viewer: str, thread: str,
                  at: datetime | None = None) -> list[dict[str, Any]]:
    """Every user of the tenant (at `at`) with `visible`, the deciding rule and event (V11)."""
    scope = _scope(engine, tenant, viewer, thread)
    state, refs = fold_until(tenant, scope, _events(engine, tenant, scope), at)
    return access_answer(state, thread, refs)


def thread_access_history(engine: Engine, tenant: str, viewer: str, thread: str
                          ) -> list[dict[str, Any]]:
    """Per user of the tenant, the intervals during which they could see the thread."""
    scope = _scope(engine, tenant, viewer, thread)
    history = AccessHistory(tenant, scope).feed_all(_events(engine, tenant, scope))
    return history.answer()


def explain_for(engine: Engine, tenant: str, asker: str, viewer: str, thread: str,
                record: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    """Explain (V11) for another viewer, asked by an admin: also why a thread is hidden from
    them. Asking for oneself is the ordinary explain."""
    if viewer == asker:
        return queries.explain(thread_views(engine, tenant, thread, at), tenant, viewer, thread,
                               record)
    require_admin(engine, tenant, asker)
    return queries.explain(thread_views(engine, tenant, thread, at), tenant, viewer, thread,
                           record, audited=True)


def thread_views(engine: Engine, tenant: str, thread: str, at: datetime | None) -> ViewReader:
    """Live views, or the views as of `at` (their histories)."""
    return engine.reader(tenant, at)
