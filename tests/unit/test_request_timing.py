"""One HTTP middleware times each request once (issue #12): the API's log line and the route
histogram take the same measurement; the webhook receiver app (no API) gets the histogram only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client import REGISTRY

from adapters.http.api import create_app
from adapters.http.request_timing import RequestTiming
from adapters.http.tokens import issue
from adapters.http.webhooks import webhook_app
from runners.entrypoints.health import add_routes
from runners.services.engine import Engine

SECRET = b"test-secret-0123456789abcdef"
HEALTHZ = {"method": "GET", "route": "/healthz", "status": "200"}
MAILBOX = {"method": "GET", "route": "/v1/mailbox", "status": "200"}


@pytest.fixture(autouse=True)
def info_logged() -> Iterator[None]:
    """Info lines pass whatever level an earlier test in this process configured (a CLI run in
    process sets WARNING, and capture_logs keeps the filtering wrapper)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


def count(**labels: str) -> float:
    return REGISTRY.get_sample_value("crmsync_http_request_duration_seconds_count",
                                     labels) or 0.0


def get(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def test_one_middleware_times_each_api_request_once_for_the_log_and_the_metrics() -> None:
    app = create_app(Engine.open_in_memory(), SECRET)
    add_routes(app, None)  # as `serve` does: health routes on the API app
    assert [m.cls for m in app.user_middleware] == [RequestTiming]
    before = count(**MAILBOX)
    token = issue(SECRET, "acme", "svc", True)
    with structlog.testing.capture_logs() as logs:
        answer = get(app, "/v1/mailbox", {"Authorization": f"Bearer {token}",
                                          "X-Request-ID": "r-1"})
    assert answer.headers["x-request-id"] == "r-1"
    assert count(**MAILBOX) - before == 1
    lines = [line for line in logs if line["event"] == "request"]
    assert [(line["request_id"], line["path"], line["status"]) for line in lines] == [
        ("r-1", "/v1/mailbox", answer.status_code)]


def test_the_webhook_receiver_app_is_timed_without_request_ids() -> None:
    app = webhook_app(None, lambda _: None)  # type: ignore[arg-type]  # no delivery is posted
    add_routes(app, None)
    assert [m.cls for m in app.user_middleware] == [RequestTiming]
    before = count(**HEALTHZ)
    answer = get(app, "/healthz")
    assert answer.status_code == 200 and "x-request-id" not in answer.headers
    assert count(**HEALTHZ) - before == 1
