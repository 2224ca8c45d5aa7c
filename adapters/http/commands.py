"""The command route of the HTTP API (SPEC §6, §8): one JSON command or JSON Lines, applied
through `Engine.apply_lines` with a gate that pins the tenant, sets the actor and applies
domain.permissions, in chunks that each hold the writer lane.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from adapters.http import models as m
from adapters.http.errors import ApiError, invalid
from adapters.http.lanes import Lanes
from adapters.http.limits import MAX_BODY, RateLimit, read_body
from adapters.http.params import Who
from adapters.http.tokens import refusal
from domain import permissions
from domain.commands import Command
from domain.state import TenantState

if TYPE_CHECKING:
    from runners.services.apply import ApplyReport
    from runners.services.engine import Engine

log = structlog.get_logger("crmsync.http")
# Commands are applied this many lines at a time, one chunk holding the writer lane: the most
# another caller's command waits. Beside 8 replays a line took ~4-5 ms here (a 5,000-line post
# in 18-25 s, benchmarks/api_contention.py), so ~0.5 s a chunk.
COMMAND_CHUNK = 100
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines",
               "application/json-seq", "text/plain")


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


def add_command_routes(app: FastAPI, engine: "Engine", lanes: Lanes,
                       limit: RateLimit | None) -> None:
    """POST /v1/commands; `limit` None: no rate limit."""

    def apply_in_chunks(lines: list[bytes], gate: TokenGate) -> "ApplyReport":
        """Apply `lines` COMMAND_CHUNK at a time, each chunk holding the writer lane alone, so
        a long post delays another caller's command by one chunk, never by the whole body."""
        total: ApplyReport | None = None
        for start in range(0, len(lines), COMMAND_CHUNK):
            with lanes.writer:
                part = engine.apply_lines(lines[start:start + COMMAND_CHUNK], gate=gate)
                lanes.republish(gate.tenant)
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
