"""`crmsync serve` and `crmsync token`: the HTTP API runner and its token issuer; `serve` also
receives webhooks, which `crmsync run webhooks` (`serve_webhooks`) serves alone.

Both read the signing secret from CRMSYNC_SECRET; a missing or short secret is a clear start-up
error (exit 2). Logs are structured JSON (structlog) on stderr, one line per request with its
request id; tokens and message bodies are never logged.

Gmail pushes are authenticated by their Pub/Sub OIDC token (`gmail_push_auth`): audience
CRMSYNC_GMAIL_PUSH_AUDIENCE, optional service account CRMSYNC_GMAIL_PUSH_SERVICE_ACCOUNT,
certificates from CRMSYNC_GOOGLE_CERTS_URL. Without an audience the production mode (JetStream
or PostgreSQL) answers Gmail pushes 503 unless CRMSYNC_GMAIL_PUSH_AUTH=off; the embedded mode
warns and accepts them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from adapters.http.tokens import check_secret, issue
from runners.bootstrap.logs import configure_logging
from runners.bootstrap.settings import load_settings
from runners.services.engine import Engine

if TYPE_CHECKING:
    from fastapi import FastAPI

    from adapters.deliveries.inbox import DeliveryInbox
    from adapters.deliveries.pubsub_auth import GmailPushAuth
    from adapters.http.limits import RateLimit
    from runners.bootstrap.settings import Settings

EXIT_USAGE = 2
WEBHOOK_DB_ENV = "CRMSYNC_WEBHOOK_ENGINE_DB"  # `run webhooks --db`, for the receiver processes
PUSH_AUTH_ENV, PUSH_AUDIENCE_ENV = "CRMSYNC_GMAIL_PUSH_AUTH", "CRMSYNC_GMAIL_PUSH_AUDIENCE"


def _secret() -> bytes | None:
    try:
        return check_secret(load_settings().secret("SECRET"))
    except ValueError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return None


def token(tenant: str, user: str, service: bool, ttl: int | None = None) -> int:
    secret = _secret()
    if secret is None:
        return EXIT_USAGE
    sys.stdout.write(issue(secret, tenant, user, service, ttl=ttl) + "\n")
    return 0


def max_token_age() -> int | None:
    """CRMSYNC_TOKEN_MAX_AGE in seconds, a cap on any token's age on this server besides its own
    expiry; unset or 0: the token's expiry alone."""
    value = load_settings().TOKEN_MAX_AGE or ""
    return int(value) if value.isdigit() and int(value) > 0 else None


def serve(engine: Engine, host: str, port: int) -> int:
    secret = _secret()
    if secret is None:
        return EXIT_USAGE
    import uvicorn

    from adapters.http.api import create_app

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL or "INFO", json=True)
    app = create_app(engine, secret, token_max_age=max_token_age(),
                     rate_limit=rate_limit(settings),
                     stale_sync_seconds=settings.STALE_SYNC_SECONDS)
    # A thread wanting the GIL waits up to this long for a CPU-bound one (a command chunk being
    # decided) to yield it, at each of a query's handoffs (loop, worker thread, every SQLite
    # call): 1 ms instead of 5 (embedded, a reader's p99 beside a 5,000-line post: 29-32 ms
    # against 40-52 ms; see docs/decisions/ for how noisy that was).
    sys.setswitchinterval(0.001)
    from adapters.http.webhooks import shared_client_state, webhook_router

    production = engine.path is None or bool(settings.NATS_URL)  # PostgreSQL/NATS
    app.include_router(webhook_router(webhook_inbox(engine.path),
                                      shared_client_state(settings.secret("GRAPH_CLIENT_STATE")),
                                      gmail_push_auth(production)))
    unregister = observe(app, engine)
    structlog.get_logger("crmsync.serve").info("serving", host=host, port=port,
                                               db=engine.path or "memory")
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_config=None,
                    log_level="warning")
    finally:
        unregister()
    return 0


def observe(app: FastAPI, engine: Engine) -> Callable[[], None]:
    """/healthz, /readyz and /metrics on `serve`'s app, through its engine: the lag gate
    applies where projection runners keep the views (not `engine.follow`). Returns the removal
    of the store gauges from this process's registry."""
    from adapters.metrics import prometheus as metrics
    from runners.entrypoints.health import Probe, add_routes, collector

    settings = load_settings()
    probe = Probe(lambda: engine, gate_lag=not engine.follow, owned=False,
                  max_lag=settings.READY_MAX_LAG, timeout=settings.READY_TIMEOUT)
    add_routes(app, probe.ready)
    return metrics.register(collector(probe))


def gmail_push_auth(production: bool) -> GmailPushAuth | None:
    """How `/webhooks/gmail` authenticates pushes, from the environment (see the module
    docstring); None accepts them unauthenticated. Logs the choice once, at start."""
    from adapters.deliveries.pubsub_auth import (
        GOOGLE_CERTS_URL,
        GoogleCerts,
        PushVerifier,
        RouteDisabled,
    )

    log = structlog.get_logger("crmsync.serve")
    settings = load_settings()
    setting = settings.GMAIL_PUSH_AUTH.strip().lower()
    audience = settings.GMAIL_PUSH_AUDIENCE.strip()
    if setting == "off":
        log.warning("gmail_push_unauthenticated", reason=f"{PUSH_AUTH_ENV}=off")
        return None
    if audience:
        certs_url = settings.GOOGLE_CERTS_URL.strip() or GOOGLE_CERTS_URL
        account = (settings.GMAIL_PUSH_SERVICE_ACCOUNT or "").strip() or None
        log.info("gmail_push_authenticated", audience=audience, service_account=account,
                 certs_url=certs_url)
        return PushVerifier(audience, GoogleCerts(certs_url), service_account=account)
    if production:
        reason = (f"Gmail pushes refused (503): set {PUSH_AUDIENCE_ENV} to the push "
                  f"subscription's audience, or {PUSH_AUTH_ENV}=off to accept them unchecked")
        log.error("gmail_push_route_disabled", reason=reason)
        return RouteDisabled(reason)
    log.warning("gmail_push_unauthenticated",
                reason=f"embedded mode without {PUSH_AUDIENCE_ENV}: anyone can post pushes")
    return None


def rate_limit(settings: Settings) -> RateLimit | None:
    """CRMSYNC_COMMAND_RATE commands/s per principal (0: no limit), CRMSYNC_COMMAND_BURST."""
    from adapters.http.limits import RateLimit

    return RateLimit(settings.COMMAND_RATE, settings.COMMAND_BURST) \
        if settings.COMMAND_RATE > 0 else None


def webhook_inbox(db: str | None) -> DeliveryInbox:
    """Where webhook deliveries go: JetStream when CRMSYNC_NATS_URL is set (stream and subject
    prefix from CRMSYNC_NATS_STREAM / CRMSYNC_NATS_SUBJECT_PREFIX), else the SQLite inbox in
    CRMSYNC_WEBHOOK_INBOX, else `<db without .db>.webhooks.db` beside the engine's file."""
    settings = load_settings()
    if settings.NATS_URL:
        from adapters.deliveries.inbox_jetstream import JetStreamInbox

        return JetStreamInbox(settings.NATS_URL, stream=settings.NATS_STREAM,
                              subject_prefix=settings.NATS_SUBJECT_PREFIX)
    from adapters.deliveries.inbox_sqlite import SqliteInbox

    path = settings.WEBHOOK_INBOX
    if not path:
        base = db or "crmsync.db"
        path = (base[:-3] if base.endswith(".db") else base) + ".webhooks.db"
    return SqliteInbox(path)


def webhooks_from_env() -> FastAPI:
    """The webhook app of one receiver process, from the environment (uvicorn's factory for
    `crmsync run webhooks --workers N`, which starts N processes on one port)."""
    from adapters.http.webhooks import shared_client_state, webhook_app

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL or "INFO", json=True)
    from runners.entrypoints.health import add_routes

    inbox = webhook_inbox(settings.WEBHOOK_ENGINE_DB)
    app = webhook_app(inbox, shared_client_state(settings.secret("GRAPH_CLIENT_STATE")),
                      gmail_push_auth(production=bool(settings.NATS_URL
                                                      or settings.POSTGRES_URL)))
    add_routes(app, None)  # no store of its own: ready while it runs (deliveries answer 503)
    return app


def serve_webhooks(db: str, host: str, port: int, workers: int = 1) -> int:
    """`crmsync run webhooks`: the webhook routes alone (no engine, no CRMSYNC_SECRET).

    With `workers` > 1, uvicorn runs that many receiver processes on the port, each with its own
    NATS connection; JetStream's Nats-Msg-Id de-duplication makes them interchangeable. The
    SQLite inbox takes one process (one writer)."""
    import uvicorn

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL or "INFO", json=True)
    log = structlog.get_logger("crmsync.serve")
    if workers < 1 or (workers > 1 and not settings.NATS_URL):
        sys.stderr.write("crmsync: --workers N > 1 needs CRMSYNC_NATS_URL (JetStream); the "
                         "SQLite inbox takes one receiver process\n")
        return EXIT_USAGE
    # uvicorn starts each receiver process from an import string (`factory=True`), with no
    # arguments: the environment is the one channel to it, so `--db` goes there as a setting
    # that the factory's load_settings() reads (a write here; the read stays in settings.py)
    os.environ[WEBHOOK_DB_ENV] = db
    log.info("serving_webhooks", host=host, port=port, workers=workers,
             inbox="JetStreamInbox" if settings.NATS_URL else "SqliteInbox")
    with shared_metrics(workers):
        uvicorn.run("runners.entrypoints.serve:webhooks_from_env", factory=True, host=host,
                    port=port, workers=workers, access_log=False, log_config=None,
                    log_level="warning")
    return 0


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """Receiver processes count into files in PROMETHEUS_MULTIPROC_DIR (a temporary one
    unless set), so /metrics on any of them, or on the parent's --metrics-port, is the sum over
    all. Files left by an earlier run in a configured directory are removed first."""
    from adapters.metrics.prometheus import MULTIPROC_ENV

    if workers <= 1:
        yield
        return
    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="crmsync-metrics-")
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)
