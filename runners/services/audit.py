"""Auditor queries (SPEC §7): who could see a thread at a time, and when, for admins only.

Composition: the asker is checked on the live views (E4: their current status and role decide
whether they may ask; anyone but an active admin gets NotFound, V12), then one tenant's stream is
read once, skipping what the thread's visibility cannot depend on (`projections.access`), and
folded for that one thread. No replay of the tenant's views, no per-user replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from adapters.eventstore.scan import Prefilter, scan_tenant
from domain import events as ev
from domain.errors import NotFound
from projections import queries
from projections.access import (
    AccessHistory,
    ThreadScope,
    access_answer,
    fold_until,
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

    writers = frozenset[type[ev.DomainEvent]]((ev.MessageSynced, ev.EmailSent))

    def keep(kind: type[ev.DomainEvent], state: bytes) -> bool:
        return kind in writers and needle in state

    others = frozenset(ev.EVENT_TYPES) - writers
    for _, event in scan_tenant(engine.stores().events, tenant, keep,
                                prefilter=Prefilter(others, writers, needle)):
        if isinstance(event, ev.MessageSynced | ev.EmailSent) and event.thread == thread:
            return event.mailbox
    raise NotFound()


def _scope(engine: Engine, tenant: str, viewer: str, thread: str) -> ThreadScope:
    require_admin(engine, tenant, viewer)
    return ThreadScope(thread, _mailbox_of(engine, tenant, thread))


def _events(engine: Engine, tenant: str, scope: ThreadScope
            ) -> Iterator[tuple[int, ev.DomainEvent]]:
    found = scope.prefilter()
    pre = Prefilter(*found) if found is not None else None
    return scan_tenant(engine.stores().events, tenant, scope.keep_stored, prefilter=pre)


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
