"""The authenticated HTTP API (issue #3): the queries of SPEC §7 and the commands of §6.

Every request carries a bearer token (adapters.tokens); the tenant and the viewer are the token's,
never a parameter. Queries give the same answers as the CLI (the same `Engine.query_*`); unknown,
foreign and invisible ids answer 404 `{"detail": "not found"}` (V12). Commands go through
`Engine.apply_lines` with a gate that pins the tenant, sets the actor and applies
domain.permissions. The engine is used under one lock (the embedded SQLite engine is one
connection and one in-memory projector).
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters import http_models as m
from adapters.errors import StoreError
from adapters.tokens import InvalidToken, Principal, verify
from domain import permissions
from domain.commands import Command
from domain.errors import NotFound
from domain.state import TenantState

if TYPE_CHECKING:  # the composition root builds the engine; the API only uses it
    from runners.engine import Engine

T = TypeVar("T")
log = structlog.get_logger("crmsync.http")
MAX_BODY = 10 * 1024 * 1024
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines",
               "application/json-seq", "text/plain")


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.errors = status, detail, headers, errors


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(422, f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


@dataclass(frozen=True)
class TokenGate:
    """The engine's Gate for one authenticated caller."""

    tenant: str
    actor: str
    user: str
    service: bool

    def authorise(self, state: TenantState, command: Command) -> None:
        permissions.authorise(state, command, user=self.user, service=self.service)


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise invalid("at", f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise invalid("at", "needs a UTC offset, e.g. 2026-01-01T00:00:00Z")
    return value


At = Annotated[str | None, Query(description="answer as of this domain time (ISO-8601 with "
                                             "offset)", json_schema_extra={"format": "date-time"})]
MinPosition = Annotated[int | None, Query(ge=0, description="read-your-writes: wait (bounded) "
                                          "until every projection has processed this position")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorAnswer, "description": "missing, malformed, forged or expired token"},
    404: {"model": m.ErrorAnswer, "description": "unknown, foreign or invisible id"},
    422: {"model": m.InvalidAnswer, "description": "malformed input, naming the field"},
    503: {"model": m.ErrorAnswer, "description": "projections could not catch up in time"},
}


class RequestLog:
    """One JSON log line per request with its id (X-Request-ID, given or made), as a plain ASGI
    middleware: Starlette's BaseHTTPMiddleware cost about a millisecond per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                      if k == b"x-request-id"), "")
        rid = given if given.isascii() and 0 < len(given) <= 64 and given.isprintable() \
            else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("request", request_id=rid, method=scope["method"], path=scope["path"],
                     status=status, ms=round((time.perf_counter() - started) * 1000, 1))


BEARER = HTTPBearer(auto_error=False)


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
              ) -> Principal:
    """The verified caller; 401 for a missing, malformed, forged or expired token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        return verify(request.app.state.secret, credentials.credentials,
                      max_age=request.app.state.token_max_age)
    except InvalidToken as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None


Who = Annotated[Principal, Depends(principal)]


def create_app(engine: "Engine", secret: bytes, *, max_wait: float = 5.0,
               token_max_age: int | None = None) -> FastAPI:
    app = FastAPI(title="crmsync", version="1", description=__doc__, responses=RESPONSES)
    app.state.secret, app.state.token_max_age = secret, token_max_age
    lock = threading.Lock()
    def answer(min_position: int | None, query: Callable[[], T]) -> T:
        """Wait for the projections when asked to (bounded), then query under the lock."""
        if min_position is not None:
            deadline = time.monotonic() + max_wait
            while True:
                with lock:
                    end = engine.store.max_position()
                    reached = min(engine.views.positions().values())
                if min_position > end:
                    raise invalid("min_position", f"{min_position} is beyond the end of the "
                                  f"event log (position {end})")
                if reached >= min_position:
                    break
                if time.monotonic() >= deadline:
                    raise ApiError(503, f"projections are at position {reached}, not yet at "
                                   f"min_position {min_position} after {max_wait:g} s; retry",
                                   {"Retry-After": "1"})
                if engine.follow:  # embedded: project here; else the runner processes do
                    with lock:
                        engine.catch_up()
                time.sleep(0.01)
        with lock:
            return query()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors is not None:
            body["errors"] = exc.errors
        return JSONResponse(body, exc.status, headers=exc.headers)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": "not found"}, 404)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                   "reason": str(e["msg"])} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, 422)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store_failure", request_id=request.state.request_id, error=str(exc))
        return JSONResponse({"detail": "store unavailable; retry"}, 503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal_error", request_id=getattr(request.state, "request_id", None))
        return JSONResponse({"detail": "internal error"}, 500)

    app.add_middleware(RequestLog)

    # -- queries --------------------------------------------------------------------------------
    @app.get("/v1/records/{record:path}/timeline", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)  # `erased` only when erased (L2), as the CLI
    def timeline(who: Who, record: str, at: At = None,
                 min_position: MinPosition = None) -> list[dict[str, Any]]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_timeline(who.tenant, who.user, record,
                                                                  at=when))

    @app.get("/v1/mailbox", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)
    def mailbox(who: Who, label: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_mailbox(who.tenant, who.user, label,
                                                                 at=when))

    @app.get("/v1/threads/{thread:path}/explain", response_model=m.Explanation)
    def explain(who: Who, thread: str, record: str | None = None, at: At = None,
                min_position: MinPosition = None) -> dict[str, Any]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_explain(who.tenant, who.user, thread,
                                                                 record, at=when))

    @app.get("/v1/threads/{thread:path}", response_model=m.ThreadAnswer,
             response_model_exclude_unset=True)
    def thread(who: Who, thread: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_thread(who.tenant, who.user, thread,
                                                                at=when))

    @app.get("/v1/records", response_model=list[m.RecordSummary])
    def records(who: Who, email: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_records(who.tenant, who.user, email,
                                                                 at=when))

    @app.get("/v1/mailboxes/{mailbox:path}/status", response_model=m.SyncStatus)
    def status(who: Who, mailbox: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        when = _parse_at(at)
        found = answer(min_position, lambda: engine.query_status(who.tenant, who.user, mailbox,
                                                                 at=when))
        return found[0]

    @app.get("/v1/contacts/{record:path}/merge",
             response_model=m.ContactMerge | m.MergedAway, response_model_exclude_unset=True)
    def contact_merge(who: Who, record: str, at: At = None,
                      min_position: MinPosition = None) -> dict[str, Any]:
        when = _parse_at(at)
        return answer(min_position, lambda: engine.query_contact(who.tenant, who.user, record,
                                                                 at=when))

    # -- commands -------------------------------------------------------------------------------
    @app.post("/v1/commands", response_model=m.CommandsAnswer, openapi_extra=COMMANDS_BODY,
              responses={413: {"model": m.ErrorAnswer, "description": "body too large"},
                         415: {"model": m.ErrorAnswer, "description": "unknown content type"}})
    async def commands(who: Who, request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and kind not in JSONL_TYPES:
            raise ApiError(415, "send one command as application/json or JSON Lines as "
                                "application/x-ndjson")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        if not body.strip():
            raise invalid("body", "no command given")
        lines = [body] if kind == "application/json" else body.splitlines()
        gate = TokenGate(who.tenant, permissions.actor_of(who.user, who.service), who.user,
                         who.service)

        def apply() -> Any:
            with lock:
                return engine.apply_lines(lines, gate=gate)

        report = await run_in_threadpool(apply)
        reasons = {n: (cmd, field, reason) for n, cmd, field, reason in report.rejected}
        results = []
        for number, outcome in report.results:
            item: dict[str, Any] = {"line": number, "result": outcome}
            if number in reasons:
                item["cmd"], item["field"], item["reason"] = reasons[number]
            results.append(item)
        log.info("commands", request_id=request.state.request_id, tenant=who.tenant,
                 actor=gate.actor, applied=report.applied, unchanged=report.unchanged,
                 rejected=len(report.rejected), position=report.position)
        return {"applied": report.applied, "unchanged": report.unchanged,
                "rejected": len(report.rejected), "results": results,
                "position": report.position}

    return app


COMMANDS_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["cmd", "tenant"], "additionalProperties": True,
        "description": "one command of SPEC §6; `actor` is replaced by the token's",
        "properties": {"cmd": {"type": "string"}, "tenant": {"type": "string"},
                       "at": {"type": "string", "format": "date-time"},
                       "command_id": {"type": "string"}}}},
    "application/x-ndjson": {"schema": {
        "type": "string", "description": "JSON Lines: one command per line"}},
}}}
