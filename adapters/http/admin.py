"""Admin routes of the HTTP API (SPEC §7): the attention list and the tenant's settings.

Active admin users only: any other caller, service tokens included, gets 404 "not found" (V12),
as for the auditor routes (`adapters.http.audit`). `stale_after` (seconds) overrides
CRMSYNC_STALE_SYNC_SECONDS for one request; stale sync is measured against this server's clock.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict

from adapters.http import models as m
from adapters.http.tokens import Principal
from domain.errors import NotFound

if TYPE_CHECKING:
    from runners.services.engine import Engine

Answer = Callable[[int | None, Callable[[], Any]], Any]


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")  # kind-specific ids: held_deletions, dead_letter
    kind: str
    since: str | None
    since_event: m.EventRef | None
    detail: str
    resolve: str
    mailbox: str | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    position: int
    configuration: dict[str, Any]
    users: list[dict[str, Any]]


def admin_user(principal: Principal) -> str:
    """The asking user; services are no admins (decision: as for the auditor routes)."""
    if principal.service:
        raise NotFound()
    return str(principal.user)


def add_admin_routes(app: FastAPI, engine: "Engine", answer: Answer) -> None:
    from adapters.http.params import Who
    from runners.services import admin
    from runners.services.admin import MAX_STALE_SECONDS

    @app.get("/v1/admin/problems", response_model=list[Problem],
             response_model_exclude_unset=True)
    def problems(who: Who, stale_after: Annotated[int | None, Query(
            gt=0, le=MAX_STALE_SECONDS, description="seconds without a successful sync that "
            "make a connected mailbox a problem (default CRMSYNC_STALE_SYNC_SECONDS, 86400)")
            ] = None
                 ) -> list[dict[str, Any]]:
        asker = admin_user(who)
        found: list[dict[str, Any]] = answer(None, lambda: admin.problems(
            engine, who.tenant, asker, stale_seconds=stale_after or app.state.stale_sync_seconds))
        return found

    @app.get("/v1/admin/settings", response_model=Settings)
    def settings(who: Who) -> dict[str, Any]:
        asker = admin_user(who)
        found: dict[str, Any] = answer(None, lambda: admin.settings(engine, who.tenant, asker))
        return found
