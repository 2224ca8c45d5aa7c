"""`crmsync serve` and `crmsync token`: the HTTP API runner and its token issuer.

Both read the signing secret from CRMSYNC_SECRET; a missing or short secret is a clear start-up
error (exit 2). Logs are structured JSON (structlog) on stderr, one line per request with its
request id; tokens and message bodies are never logged.
"""

from __future__ import annotations

import os
import sys

import structlog

from adapters.tokens import check_secret, issue
from runners.engine import Engine
from runners.logs import configure_logging

EXIT_USAGE = 2


def _secret() -> bytes | None:
    try:
        return check_secret(os.environ.get("CRMSYNC_SECRET"))
    except ValueError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return None


def token(tenant: str, user: str, service: bool) -> int:
    secret = _secret()
    if secret is None:
        return EXIT_USAGE
    sys.stdout.write(issue(secret, tenant, user, service) + "\n")
    return 0


def max_token_age() -> int | None:
    """CRMSYNC_TOKEN_MAX_AGE in seconds; unset or 0: tokens do not expire."""
    value = os.environ.get("CRMSYNC_TOKEN_MAX_AGE", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def serve(engine: Engine, host: str, port: int) -> int:
    secret = _secret()
    if secret is None:
        return EXIT_USAGE
    import uvicorn

    from adapters.http_api import create_app

    configure_logging(os.environ.get("CRMSYNC_LOG_LEVEL", "INFO"), json=True)
    app = create_app(engine, secret, token_max_age=max_token_age())
    structlog.get_logger("crmsync.serve").info("serving", host=host, port=port,
                                               db=engine.path or "memory")
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None,
                log_level="warning")
    return 0
