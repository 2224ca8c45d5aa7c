"""The one HTTP middleware: each request timed once, its duration given to the metrics under its
route template and, on the API, to one JSON log line with the request's id (X-Request-ID,
given or made, echoed in the response). A plain ASGI middleware: Starlette's
BaseHTTPMiddleware cost about a millisecond per request."""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.metrics import prometheus as metrics

log = structlog.get_logger("crmsync.http")


class RequestTiming:
    """`log`: also one log line and the request id (the API); the webhook receivers run
    without (their deliveries are logged by the inbox)."""

    def __init__(self, app: ASGIApp, log: bool = True) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope) if self.log else ""
        if rid:
            scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if rid:
                    message["headers"] = [*message.get("headers", ()),
                                          (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None)
            metrics.http_request(scope.get("method", "GET"), route, status, seconds)
            if rid:
                log.info("request", request_id=rid, method=scope["method"], path=scope["path"],
                         status=status, ms=round(seconds * 1000, 1))


def _request_id(scope: Scope) -> str:
    given = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                  if k == b"x-request-id"), "")
    return given if given.isascii() and 0 < len(given) <= 64 and given.isprintable() \
        else uuid.uuid4().hex
