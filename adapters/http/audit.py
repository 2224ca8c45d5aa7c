"""Auditor routes of the HTTP API (SPEC §7): access, access history, explain for another viewer
(in http_api) and the tenant export. Admin users only: any other caller, service tokens
included, gets 404 "not found" (V12), so ids cannot be probed through them.
"""

import threading
from collections.abc import Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from adapters.http import models as m
from adapters.http.tokens import Principal
from domain.errors import NotFound

if TYPE_CHECKING:
    from runners.services.engine import Engine

Rows = list[dict[str, Any]]
Answer = Callable[[int | None, Callable[[], Rows]], Rows]
EXPORT_LINES_PER_LOCK = 1000  # lines read under the engine's lock at a time while streaming


class AccessEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    role: str
    status: str
    visible: bool
    rule: str
    detail: str
    record: str | None
    event: m.EventRef | None


class Interval(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str | None
    rule: str
    record: str | None
    opened_by: m.EventRef | None
    closed_by: m.EventRef | None
    closed_rule: str | None


class AccessHistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    role: str
    status: str
    intervals: list[Interval]


def add_audit_routes(app: FastAPI, engine: "Engine", answer: Answer, lock: threading.Lock,
                     log_position: Callable[[Principal, int | None], int | None]) -> None:
    """Registers the routes; called before the catch-all `/v1/threads/{thread}` route.
    `log_position` maps a caller's tenant position (§8) to the log position to wait for."""
    from adapters.http.params import At, MinPosition, Who
    from adapters.http.params import parse_at as _parse_at
    from runners.services import audit
    from runners.services.export import export_lines

    def user_of(principal: Principal) -> str:
        if principal.service:
            raise NotFound()  # decision: auditing is for admin users, not services
        return str(principal.user)

    @app.get("/v1/threads/{thread:path}/access", response_model=list[AccessEntry])
    def access(who: Who, thread: str, at: At = None,
               min_position: MinPosition = None) -> list[dict[str, Any]]:
        when, asker = _parse_at(at), user_of(who)
        wait = log_position(who, min_position)
        return answer(wait, lambda: audit.thread_access(engine, who.tenant, asker, thread,
                                                        at=when))

    @app.get("/v1/threads/{thread:path}/access-history",
             response_model=list[AccessHistoryEntry], response_model_by_alias=True)
    def access_history(who: Who, thread: str, min_position: MinPosition = None
                       ) -> list[dict[str, Any]]:
        asker = user_of(who)
        return answer(log_position(who, min_position), lambda: audit.thread_access_history(
            engine, who.tenant, asker, thread))

    @app.get("/v1/admin/export", response_class=StreamingResponse, responses={200: {
        "content": {"application/x-ndjson": {}},
        "description": "the tenant's events in order, one JSON object per line"}})
    def export(who: Who, since: Annotated[str | None, Query()] = None,
               until: Annotated[str | None, Query()] = None,
               with_content: bool = False) -> StreamingResponse:
        start, end, asker = _parse_at(since), _parse_at(until), user_of(who)
        with lock:
            audit.require_admin(engine, who.tenant, asker)
        lines = export_lines(engine, who.tenant, start, end, with_content)

        def chunks() -> Iterator[bytes]:
            while True:
                with lock:  # one page at a time: other requests run between pages
                    chunk = list(islice(lines, EXPORT_LINES_PER_LOCK))
                if not chunk:
                    return
                yield b"".join(chunk)

        return StreamingResponse(chunks(), media_type="application/x-ndjson")
