"""The authenticated HTTP API (issue #3): the queries of SPEC §7 and the commands of §6.

Every request carries a bearer token (adapters.http.tokens); the tenant and the viewer are the
token's, never a parameter. A user token is refused (401) at once when the tenant's state says the
user is not active or revoked the token (§8), so a deactivated user cannot ask even with `at` (E4,
L1). Queries give the same answers as the CLI (the same `Engine.query_*`); unknown, foreign and
invisible ids answer 404 `{"detail": "not found"}` (V12). Commands go through
`Engine.apply_lines` with a gate that pins the tenant, sets the actor and applies
domain.permissions; one JSON command that is rejected answers 422 (404 for an unknown or
invisible id), JSON Lines answer 200 per line. Each principal's commands pass a token bucket
(`RateLimit`, in this process). Positions handed out and taken (`min_position`) are the
tenant's stream version (§8), mapped to the log position to wait on the views. There is no
process-wide lock: reads (live or `at`, which reads the views' histories) run beside commands,
and commands take a writer lane one chunk at a time.
"""

from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI

from adapters.http import models as m
from adapters.http.admin import add_admin_routes
from adapters.http.audit import add_audit_routes
from adapters.http.commands import add_command_routes
from adapters.http.errors import add_error_handlers
from adapters.http.lanes import Lanes
from adapters.http.limits import (
    DEFAULT_COMMAND_BURST,
    DEFAULT_COMMAND_RATE,
    UNSET_LIMIT,
    RateLimit,
)
from adapters.http.queries import add_query_routes
from adapters.http.request_timing import RequestTiming
from adapters.http.ui import add_ui_routes

if TYPE_CHECKING:  # the composition root builds the engine; the API only uses it
    from runners.services.engine import Engine

log = structlog.get_logger("crmsync.http")

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorAnswer, "description": "missing, malformed, forged, expired or revoked "
          "token, or a user who is not an active user of the tenant"},
    404: {"model": m.ErrorAnswer, "description": "unknown, foreign or invisible id"},
    422: {"model": m.InvalidAnswer, "description": "malformed input, naming the field"},
    503: {"model": m.ErrorAnswer, "description": "projections could not catch up in time"},
}




def create_app(engine: "Engine", secret: bytes, *, max_wait: float = 5.0,
               token_max_age: int | None = None,
               rate_limit: RateLimit | None = UNSET_LIMIT, stale_sync_seconds: int | None = None
               ) -> FastAPI:
    """The API over `engine`; `rate_limit` None: no limit, unset: the default limit;
    `stale_sync_seconds`: the problems' default stale threshold (None: 24 h)."""
    app = FastAPI(title="crmsync", version="1", description=__doc__, responses=RESPONSES)
    app.state.secret, app.state.token_max_age = secret, token_max_age
    app.state.stale_sync_seconds = stale_sync_seconds
    limit = RateLimit(DEFAULT_COMMAND_RATE, DEFAULT_COMMAND_BURST) \
        if rate_limit is UNSET_LIMIT else rate_limit
    engine.share_between_threads()
    lanes = Lanes(engine, max_wait)
    app.state.refusal = lanes.refused  # read by adapters.http.params.principal
    add_error_handlers(app)
    app.add_middleware(RequestTiming)  # the one middleware: timed once, logged, measured
    # auditor routes (access, access history, export) before the catch-all thread route
    add_audit_routes(app, engine, lanes.answer, lanes.writer, lanes.log_position)
    add_admin_routes(app, engine, lanes.answer_from_state)  # problems, settings (issue #14)
    add_ui_routes(app, engine, lanes.answer_from_state)  # the admin pages at /ui/ (issue #14)
    add_query_routes(app, engine, lanes)
    add_command_routes(app, engine, lanes, limit)
    return app
