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
process-wide lock: reads run beside commands, commands take a writer lane one chunk at a time,
and replays (`at`) are bounded (`ReplayLane`).
"""

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from adapters.errors import StoreError
from adapters.http import models as m
from adapters.http.admin import add_admin_routes
from adapters.http.audit import add_audit_routes
from adapters.http.request_timing import RequestTiming
from adapters.http.tokens import InvalidToken, Principal, refusal, status_refusal, verify
from adapters.http.ui import add_ui_routes
from domain import permissions
from domain.commands import Command
from domain.errors import NotFound
from domain.input_rules import could_be_id
from domain.state import TenantState

if TYPE_CHECKING:  # the composition root builds the engine; the API only uses it
    from runners.services.engine import ApplyReport, Engine

T = TypeVar("T")
log = structlog.get_logger("crmsync.http")
MAX_BODY = 10 * 1024 * 1024
# Commands are applied this many lines at a time, one chunk holding the writer lane: the most
# another caller's command waits. Beside 8 replays a line took ~4-5 ms here (a 5,000-line post
# in 18-25 s, benchmarks/api_contention.py), so ~0.5 s a chunk.
COMMAND_CHUNK = 100
# Replays (`at`) fold a tenant's stream in Python, holding the GIL: this many run at once (in
# this process, or in `crmsync serve`'s replay processes, one slot each), this many more wait;
# beyond that 429 + Retry-After. In-process, more slots would not replay faster (one GIL) and
# would take more of the interpreter from the live readers.
REPLAY_SLOTS, REPLAY_QUEUE = 1, 16
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

    def recordable(self, state: TenantState) -> bool:
        return self.service or refusal(state, self.user, None) is None


def _path_id(value: str) -> None:
    """A path id that nothing stored can carry (NUL, control characters, absurd length) is
    unknown: 404 like any unknown id (V12), never a store error."""
    if not could_be_id(value):
        raise NotFound("not found")


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
                                          "until every projection has processed this position "
                                          "of your tenant (a `position` of /v1/commands)")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorAnswer, "description": "missing, malformed, forged, expired or revoked "
          "token, or a user who is not an active user of the tenant"},
    404: {"model": m.ErrorAnswer, "description": "unknown, foreign or invisible id"},
    422: {"model": m.InvalidAnswer, "description": "malformed input, naming the field"},
    429: {"model": m.ErrorAnswer, "description": "too many replays (`at`) in progress; "
                                                  "retry after Retry-After seconds"},
    503: {"model": m.ErrorAnswer, "description": "projections could not catch up in time"},
}


class RateLimit:
    """A token bucket per principal (tenant, user, service) on POST /v1/commands, in this process:
    `rate` commands a second, up to `burst` saved. A request is admitted while the bucket holds
    at least one token and then takes one per command line, possibly into debt, so one large
    batch passes and the next waits until the debt is paid: `take` answers the seconds to wait
    (the 429's Retry-After), 0 when admitted. Several server processes each keep their own."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[tuple[str, str, bool], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[str, str, bool], cost: int) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - cost, now)
            return 0.0


class ReplayLane:
    """Bounded concurrency for replays: `slots` at a time, `queue` more waiting (in their
    worker threads), and any further one refused at once with 429 + Retry-After, so a burst of
    replays neither starves the live readers of the interpreter nor fills the thread pool."""

    def __init__(self, slots: int, queue: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._limit = slots + queue
        self._admitted = 0
        self._count = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._count:
            if self._admitted >= self._limit:
                raise ApiError(429, f"{self._limit} replays (at=) are in progress or waiting; "
                                    "retry", {"Retry-After": "1"})
            self._admitted += 1
        try:
            with self._slots:
                yield
        finally:
            with self._count:
                self._admitted -= 1


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes: a declared
    Content-Length over the limit before reading anything, a chunked body once the bytes
    received pass it. The rest never reaches the app (uvicorn discards it), so memory stays
    ~`limit` whatever the client sends."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    return bytes(body)


BEARER = HTTPBearer(auto_error=False)


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
              ) -> Principal:
    """The verified caller; 401 for a missing, malformed, forged, expired or revoked token, or
    the token of a user who is not (or no longer) an active user of the tenant."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        who = verify(request.app.state.secret, credentials.credentials,
                     max_age=request.app.state.token_max_age)
    except InvalidToken as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    refused: str | None = request.app.state.refusal(who)
    if refused is not None:
        raise ApiError(401, refused, {"WWW-Authenticate": "Bearer"})
    return who


Who = Annotated[Principal, Depends(principal)]


# CRMSYNC_COMMAND_RATE / CRMSYNC_COMMAND_BURST's defaults (runners.bootstrap.settings;
# runners.entrypoints.serve passes the configured limit): commands/s per principal and the burst
DEFAULT_COMMAND_RATE, DEFAULT_COMMAND_BURST = 20.0, 1000.0
UNSET_LIMIT = RateLimit(1, 1)  # placeholder: `create_app` makes a default limit when not given


def create_app(engine: "Engine", secret: bytes, *, max_wait: float = 5.0,
               token_max_age: int | None = None,
               rate_limit: RateLimit | None = UNSET_LIMIT, replay_slots: int = REPLAY_SLOTS,
               replay_queue: int = REPLAY_QUEUE, stale_sync_seconds: int | None = None
               ) -> FastAPI:
    """The API over `engine`; `rate_limit` None: no limit, unset: the default limit;
    `stale_sync_seconds`: the problems' default stale threshold (None: 24 h)."""
    app = FastAPI(title="crmsync", version="1", description=__doc__, responses=RESPONSES)
    app.state.secret, app.state.token_max_age = secret, token_max_age
    app.state.stale_sync_seconds = stale_sync_seconds
    limit = RateLimit(DEFAULT_COMMAND_RATE, DEFAULT_COMMAND_BURST) \
        if rate_limit is UNSET_LIMIT else rate_limit
    engine.share_between_threads(ReplayLane(replay_slots, replay_queue).slot)
    writer = threading.Lock()  # one command chunk at a time: the engine's tenant states are shared
    # (tenant, user) -> (active, tokens revoked at): what a token check needs, as last seen under
    # the writer lane, so a read never waits for a command chunk to end (see `refused`)
    principals: dict[str, dict[str, tuple[bool, float | None]]] = {}  # tenant -> user -> seen

    def look_up(tenant: str, user: str) -> tuple[bool, float | None]:
        """Under the writer lane: the user's status from the tenant's fresh state."""
        found = engine.store.state(tenant).users.get(user)
        seen = (False, None) if found is None else (
            found.active,
            None if found.tokens_revoked_at is None else found.tokens_revoked_at.timestamp())
        principals.setdefault(tenant, {})[user] = seen
        return seen

    def republish(tenant: str) -> None:
        """Under the writer lane, after a command chunk: refresh the tenant's known users, so a
        deactivation or RevokeTokens applied here is refused at once by the next request."""
        for user in list(principals.get(tenant, ())):
            look_up(tenant, user)

    def refused(who: Principal) -> str | None:
        """§8: why a valid token is refused now, or None. Reads fresh state when the writer lane
        is free (or the user was never seen); while a command chunk holds it, the status as of
        the last chunk (`republish`), so readers never stall behind writers."""
        if who.service:  # services are revoked by rotating the secret (docs/decisions.md)
            return None
        key = (who.tenant, who.user)
        if writer.acquire(blocking=who.user not in principals.get(who.tenant, {})):
            try:
                active, revoked = look_up(*key)
            finally:
                writer.release()
        else:
            active, revoked = principals[who.tenant][who.user]
        return status_refusal(active, revoked, who.issued_at)

    def log_position(who: Principal, min_position: int | None) -> int | None:
        """The log position to wait for, from a position of the caller's tenant (§8)."""
        if min_position is None or min_position == 0:
            return min_position
        with writer:
            latest = engine.store.state(who.tenant).seq
            if min_position > latest:
                raise invalid("min_position", f"{min_position} is beyond your tenant's latest "
                              f"position ({latest})")
            return engine.store.log_position(who.tenant, min_position)

    app.state.refusal = refused

    def answer(min_position: int | None, query: Callable[[], T]) -> T:
        """Wait for the projections when asked to (bounded), then query. No process-wide lock:
        live reads run beside commands and replays (which take a slot of `replays`, see
        Engine.reader)."""
        if min_position is not None:
            deadline = time.monotonic() + max_wait
            while True:
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
                if engine.follow:  # embedded: the engine's follower projects; else runners
                    engine.request_catch_up()
                time.sleep(0.01)
        return query()

    def apply_in_chunks(lines: list[bytes], gate: TokenGate) -> "ApplyReport":
        """Apply `lines` COMMAND_CHUNK at a time, each chunk holding the writer lane alone, so
        a long post delays another caller's command by one chunk, never by the whole body."""
        total: ApplyReport | None = None
        for start in range(0, len(lines), COMMAND_CHUNK):
            with writer:
                part = engine.apply_lines(lines[start:start + COMMAND_CHUNK], gate=gate)
                republish(gate.tenant)
            part.rejected = [(n + start, cmd, f, why) for n, cmd, f, why in part.rejected]
            part.results = [(n + start, outcome) for n, outcome in part.results]
            part.warnings = [(n + start, warning) for n, warning in part.warnings]
            if total is None:
                total = part
                continue
            total.applied += part.applied
            total.unchanged += part.unchanged
            total.rejected += part.rejected
            total.results += part.results
            total.position = part.position
            total.tenant_positions.update(part.tenant_positions)
            total.warnings += part.warnings
        assert total is not None  # the caller refuses an empty body
        return total

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

    app.add_middleware(RequestTiming)  # the one middleware: timed once, logged, measured
    # auditor routes (access, access history, export) before the catch-all thread route
    add_audit_routes(app, engine, answer, writer, log_position)

    def answer_from_state(min_position: int | None, query: Callable[[], T]) -> T:
        """For the admin queries, which read the tenant's folded state: under the writer lane,
        the one thing that changes that state in this process (they are rare; a reader of the
        views never waits for it)."""
        def locked() -> T:
            with writer:
                return query()

        return answer(min_position, locked)

    add_admin_routes(app, engine, answer_from_state)  # problems, settings (issue #14)
    add_ui_routes(app, engine, answer_from_state)  # the admin pages at /ui/ (issue #14)

    # -- queries --------------------------------------------------------------------------------
    @app.get("/v1/records/{record:path}/timeline", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)  # `erased` only when erased (L2), as the CLI
    def timeline(who: Who, record: str, at: At = None,
                 min_position: MinPosition = None) -> list[dict[str, Any]]:
        _path_id(record)
        when, wait = _parse_at(at), log_position(who, min_position)
        return answer(wait, lambda: engine.query_timeline(who.tenant, who.user, record,
                                                          at=when))

    @app.get("/v1/mailbox", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)
    def mailbox(who: Who, label: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when, wait = _parse_at(at), log_position(who, min_position)
        return answer(wait, lambda: engine.query_mailbox(who.tenant, who.user, label,
                                                         at=when))

    @app.get("/v1/threads/{thread:path}/explain", response_model=m.Explanation)
    def explain(who: Who, thread: str, record: str | None = None, at: At = None,
                min_position: MinPosition = None, viewer: str | None = None) -> dict[str, Any]:
        _path_id(thread)
        when, wait = _parse_at(at), log_position(who, min_position)
        if viewer is not None and viewer != who.user:  # admins only (http_audit)
            from runners.services.audit import explain_for

            asker = "" if who.service else who.user  # a service is no admin: not found
            return answer(wait, lambda: explain_for(engine, who.tenant, asker, viewer,
                                                    thread, record, at=when))
        return answer(wait, lambda: engine.query_explain(who.tenant, who.user, thread,
                                                         record, at=when))

    @app.get("/v1/threads/{thread:path}", response_model=m.ThreadAnswer,
             response_model_exclude_unset=True)
    def thread(who: Who, thread: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        _path_id(thread)
        when, wait = _parse_at(at), log_position(who, min_position)
        return answer(wait, lambda: engine.query_thread(who.tenant, who.user, thread,
                                                        at=when))

    @app.get("/v1/records", response_model=list[m.RecordSummary])
    def records(who: Who, email: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when, wait = _parse_at(at), log_position(who, min_position)
        return answer(wait, lambda: engine.query_records(who.tenant, who.user, email,
                                                         at=when))

    @app.get("/v1/mailboxes/{mailbox:path}/status", response_model=m.SyncStatus)
    def status(who: Who, mailbox: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        _path_id(mailbox)
        when, wait = _parse_at(at), log_position(who, min_position)
        found = answer(wait, lambda: engine.query_status(who.tenant, who.user, mailbox,
                                                         at=when))
        return found[0]

    @app.get("/v1/contacts/{record:path}/merge",
             response_model=m.ContactMerge | m.MergedAway, response_model_exclude_unset=True)
    def contact_merge(who: Who, record: str, at: At = None,
                      min_position: MinPosition = None) -> dict[str, Any]:
        _path_id(record)
        when, wait = _parse_at(at), log_position(who, min_position)
        return answer(wait, lambda: engine.query_contact(who.tenant, who.user, record,
                                                         at=when))

    # -- commands -------------------------------------------------------------------------------
    @app.post("/v1/commands", response_model=m.CommandsAnswer, openapi_extra=COMMANDS_BODY,
              responses={413: {"model": m.ErrorAnswer, "description": "body too large"},
                         415: {"model": m.ErrorAnswer, "description": "unknown content type"},
                         422: {"model": m.InvalidAnswer, "description": "malformed input, or "
                               "the one JSON command was rejected"},
                         404: {"model": m.ErrorAnswer, "description": "the one JSON command "
                               "names an unknown or invisible id"},
                         429: {"model": m.ErrorAnswer, "description": "too many commands from "
                               "this principal; retry after Retry-After seconds"}})
    async def commands(who: Who, request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and kind not in JSONL_TYPES:
            raise ApiError(415, "send one command as application/json or JSON Lines as "
                                "application/x-ndjson")
        body = await read_body(request, MAX_BODY)
        if not body.strip():
            raise invalid("body", "no command given")
        single = kind == "application/json"
        lines = [body] if single else body.splitlines()
        if limit is not None:
            wait = limit.take((who.tenant, who.user, who.service),
                              max(1, sum(1 for line in lines if line.strip())))
            if wait > 0:
                raise ApiError(429, "too many commands; retry later",
                               {"Retry-After": str(math.ceil(wait))})
        gate = TokenGate(who.tenant, permissions.actor_of(who.user, who.service), who.user,
                         who.service)

        report = await run_in_threadpool(apply_in_chunks, lines, gate)
        reasons = {n: (cmd, field, reason) for n, cmd, field, reason in report.rejected}
        results = []
        for number, outcome in report.results:
            item: dict[str, Any] = {"line": number, "result": outcome}
            if number in reasons:
                item["cmd"], item["field"], item["reason"] = reasons[number]
            warnings = [w for n, w in report.warnings if n == number]
            if warnings:
                item["warnings"] = warnings
            results.append(item)
        position = report.tenant_positions.get(who.tenant, 0)
        log.info("commands", request_id=request.state.request_id, tenant=who.tenant,
                 actor=gate.actor, applied=report.applied, unchanged=report.unchanged,
                 rejected=len(report.rejected), position=position)
        if single and report.rejected:  # §8: one rejected command is a 4xx
            _, cmd, field, reason = report.rejected[0]
            if _names_missing_id(field, reason):
                raise ApiError(404, f"{field}: {reason}")
            raise ApiError(422, f"{cmd}: {field}: {reason}",
                           errors=[{"field": field, "reason": reason}])
        return {"applied": report.applied, "unchanged": report.unchanged,
                "rejected": len(report.rejected), "results": results,
                "position": position}

    return app


def _names_missing_id(field: str, reason: str) -> bool:
    """A rejection for an unknown or invisible id (404) rather than a broken rule (422): the
    permission check's "not found", or decide's "unknown <kind> '<id>'" on an id field."""
    if field in ("cmd", "(line)", "tenant"):
        return False
    return reason == permissions.NOT_FOUND or (reason.startswith("unknown ") and "'" in reason)


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
