"""The webhook receiver (issue #4): provider notifications in, durable deliveries out.

`POST /webhooks/gmail` takes a Cloud Pub/Sub push envelope; `POST /webhooks/graph` takes the
Microsoft Graph validation handshake (`?validationToken=`, echoed as text/plain) or a collection
of change and lifecycle notifications. Bodies are parsed by `adapters.deliveries.webhooks` into
the typed deliveries of `adapters.deliveries.model`; each accepted one is handed, typed, to a
`DeliveryInbox` (JetStream or the SQLite inbox), stored under its dedup id, and the provider
gets 202 only once every accepted delivery is durable. Malformed input is 400 `{"detail",
"field"}`, bodies over 1 MiB 413, an inbox failure 503 with Retry-After (the provider
delivers again; the dedup ids make that harmless). Notifications whose clientState does not match
are logged with their delivery id and reason (never the clientState) and not delivered.

No bearer token of ours: providers cannot send it. Gmail pushes are authenticated by the
Pub/Sub OIDC token when a `GmailPushAuth` is given (`adapters/deliveries/pubsub_auth.py`: 401/403
before the body is read, nothing stored; 503 when the route is disabled or Google's certificates
cannot be had); Graph notifications by their clientState.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from adapters.deliveries.inbox import DeliveryInbox
from adapters.deliveries.pubsub_auth import GmailPushAuth, PushRefused
from adapters.deliveries.webhooks import (
    ClientStateLookup,
    GraphValidation,
    parse_gmail_push,
    parse_graph,
)
from adapters.errors import DeliveryStoreError, MalformedWebhook
from adapters.http.errors import add_base_handlers
from adapters.metrics import prometheus as metrics

MAX_WEBHOOK_BODY = 1 << 20
log = structlog.get_logger("crmsync.webhooks")


def shared_client_state(secret: str | None) -> ClientStateLookup:
    """Every subscription expects the one shared `secret` (CRMSYNC_GRAPH_CLIENT_STATE); without
    one no subscription is known and every Graph notification is rejected."""
    def lookup(subscription_id: str) -> str | None:
        return secret or None

    return lookup


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    # length first: int() of thousands of digits raises (and non-ASCII digits always do)
    if declared.isascii() and declared.isdigit() and (
            len(declared) > 9 or int(declared) > MAX_WEBHOOK_BODY):
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_WEBHOOK_BODY:
            raise _TooLarge
    return bytes(body)


def _malformed(exc: MalformedWebhook, provider: str, request: Request) -> JSONResponse:
    metrics.webhook(provider, "malformed")
    log.info("webhook_malformed", provider=provider, field=exc.field, reason=exc.reason,
             request_id=getattr(request.state, "request_id", None))
    return JSONResponse({"detail": f"{exc.field}: {exc.reason}", "field": exc.field}, 400)


def _too_large() -> JSONResponse:
    return JSONResponse({"detail": f"body larger than {MAX_WEBHOOK_BODY} bytes",
                         "field": "body"}, 413)


def _unavailable(exc: DeliveryStoreError, provider: str, request: Request) -> JSONResponse:
    metrics.webhook(provider, "unavailable")
    log.error("webhook_not_stored", provider=provider, error=str(exc),
              request_id=getattr(request.state, "request_id", None))
    return JSONResponse({"detail": "delivery store unavailable; retry"}, 503,
                        headers={"Retry-After": "5"})


def _refused(exc: PushRefused, request: Request) -> JSONResponse:
    metrics.webhook("gmail", "refused")
    log.warning("webhook_refused", provider="gmail", status=exc.status, reason=exc.reason,
                request_id=getattr(request.state, "request_id", None))
    if exc.status == 401:
        return JSONResponse({"detail": "push not authenticated"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})
    if exc.status == 403:
        return JSONResponse({"detail": "push token not accepted"}, 403)
    return JSONResponse({"detail": "push authentication unavailable; retry"}, 503,
                        headers={"Retry-After": "30"})


RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "every accepted delivery is durable"},
    400: {"description": "malformed payload: `{detail, field}`"},
    401: {"description": "Gmail: no valid Pub/Sub OIDC token"},
    403: {"description": "Gmail: the token's audience or service account is not ours"},
    413: {"description": "body larger than 1 MiB"},
    503: {"description": "the delivery store is unavailable; retry"},
}


def webhook_router(inbox: DeliveryInbox, client_state: ClientStateLookup,
                   gmail_auth: GmailPushAuth | None = None) -> APIRouter:
    """The webhook routes; the inbox is closed when the application shuts down. Without
    `gmail_auth` Gmail pushes are accepted unauthenticated (the embedded mode's choice)."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await inbox.close()
            if gmail_auth is not None:
                await gmail_auth.close()

    router = APIRouter(lifespan=lifespan, tags=["webhooks"], responses=RESPONSES)

    @router.post("/webhooks/gmail", status_code=202)
    async def gmail(request: Request) -> Response:
        if gmail_auth is not None:
            try:
                await gmail_auth.check(request.headers.get("authorization"))
            except PushRefused as exc:
                return _refused(exc, request)
        try:
            body = await _read_body(request)
            push = parse_gmail_push(body)
        except _TooLarge:
            return _too_large()
        except MalformedWebhook as exc:
            return _malformed(exc, "gmail", request)
        try:
            new = await inbox.deliver(push)
        except DeliveryStoreError as exc:
            return _unavailable(exc, "gmail", request)
        metrics.webhook("gmail", "accepted" if new else "duplicate")
        log.info("webhook_stored", provider="gmail", delivery_id=push.delivery_id,
                 duplicate=not new, request_id=getattr(request.state, "request_id", None))
        return Response(status_code=202)

    @router.post("/webhooks/graph", status_code=202,
                 responses={200: {"description": "validation handshake: the token as text/plain",
                                  "content": {"text/plain": {}}}})
    async def graph(request: Request) -> Response:
        query = dict(request.query_params)
        try:
            # the handshake is answered at once, whatever the body
            body = b"" if "validationToken" in query else await _read_body(request)
            parsed = parse_graph(body, query, client_state)
        except _TooLarge:
            return _too_large()
        except MalformedWebhook as exc:
            return _malformed(exc, "graph", request)
        if isinstance(parsed, GraphValidation):
            # echoed input: never let a browser sniff it into HTML
            return PlainTextResponse(parsed.token, 200,
                                     headers={"X-Content-Type-Options": "nosniff"})
        rid = getattr(request.state, "request_id", None)
        metrics.webhook("graph", "refused", len(parsed.rejected))
        for item in parsed.rejected:
            log.warning("webhook_rejected", provider="graph", delivery_id=item.delivery_id,
                        subscription_id=item.subscription_id, reason=item.rejection,
                        request_id=rid)
        accepted = parsed.accepted
        results = await asyncio.gather(*(inbox.deliver(item) for item in accepted),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, DeliveryStoreError):
                return _unavailable(result, "graph", request)
            if isinstance(result, BaseException):
                raise result
        for item, new in zip(accepted, results, strict=True):
            metrics.webhook("graph", "accepted" if new else "duplicate")
            log.info("webhook_stored", provider="graph", delivery_id=item.delivery_id,
                     duplicate=not new, request_id=rid)
        # 202 even when every notification was rejected: Graph retries non-2xx answers, and a
        # forged batch must cause neither retries nor an oracle for the clientState.
        return Response(status_code=202)

    return router


def webhook_app(inbox: DeliveryInbox, client_state: ClientStateLookup,
                gmail_auth: GmailPushAuth | None = None) -> FastAPI:
    """The webhook routes alone (`crmsync run webhooks`): JSON errors, never details of a bug."""
    app = FastAPI(title="crmsync webhooks", version="1", description=__doc__)
    app.include_router(webhook_router(inbox, client_state, gmail_auth))
    add_base_handlers(app)
    return app

