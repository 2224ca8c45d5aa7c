"""Admin queries (SPEC §7): problems (the attention list) and settings, for active admins only.

The asker is checked like the auditor queries (`audit.require_admin`: anyone else, NotFound).
Problems read the tenant's stream once, only the few event types `projections.admin.EVENTS`
(the database leaves the others out), plus the command-side state.

Stale sync is measured against `now`, the wall clock of the asking process (decision in
docs/decisions/http-and-security.md): a tenant whose sync stopped appends nothing, so its own
latest domain time would never make it look stale. The threshold is given by the caller (a request's
`stale_after`, else CRMSYNC_STALE_SYNC_SECONDS from the entrypoint's settings).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapters.eventstore.scan import Prefilter, scan_tenant
from domain import events as ev
from projections import admin
from runners.services.audit import require_admin

if TYPE_CHECKING:
    from runners.services.engine import Engine

MAX_STALE_SECONDS = 100 * 366 * 86400  # a century: beyond it, timedelta arithmetic overflows


def stale_after(seconds: int | None = None) -> timedelta:
    """The given threshold (seconds), else 24 h (None or not positive)."""
    if seconds is None or seconds <= 0:
        return admin.DEFAULT_STALE_AFTER
    return timedelta(seconds=min(seconds, MAX_STALE_SECONDS))


def problems(engine: Engine, tenant: str, viewer: str, *, now: datetime | None = None,
             stale_seconds: int | None = None) -> list[dict[str, Any]]:
    require_admin(engine, tenant, viewer)
    others = frozenset(ev.EVENT_TYPES) - admin.EVENTS

    def keep(kind: type[ev.DomainEvent], state: bytes) -> bool:
        return kind in admin.EVENTS

    log = admin.ProblemLog().feed_all(
        scan_tenant(engine.stores().events, tenant, keep,
                    prefilter=Prefilter(others, frozenset(), b"")))
    return admin.problems(engine.state(tenant), log, now or datetime.now(UTC),
                          stale_after(stale_seconds))


def settings(engine: Engine, tenant: str, viewer: str) -> dict[str, Any]:
    require_admin(engine, tenant, viewer)
    return admin.settings(engine.state(tenant, lazy=True))  # (users, records: tenant-wide)
