"""SPEC §8 through real HTTP: the webhook receiver (uvicorn on loopback, built from the environment
as `crmsync run webhooks` builds it) verifies Gmail pushes against certificates served by a
loopback server of this test; a refused push leaves the SQLite inbox empty."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google_tokens import ACCOUNT, AUDIENCE, SigningKey, certs
from loopback import Server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.http.webhooks import shared_client_state, webhook_app
from runners.entrypoints.serve import gmail_push_auth, webhooks_from_env

pytestmark = pytest.mark.integration

KEY, FORGER = SigningKey("google-key-1"), SigningKey("google-key-1")  # same kid, other key


class CertsServer:
    """Google's certificate endpoint on loopback; counts the requests."""

    def __init__(self, *keys: SigningKey) -> None:
        self.requests = 0
        self.document = certs(*keys)

        async def serve_certs(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse(self.document,
                                headers={"Cache-Control": "public, max-age=20000"})

        self.server = Server(Starlette(routes=[Route("/oauth2/v1/certs", serve_certs)]))

    def __enter__(self) -> CertsServer:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return f"{self.server.url}/oauth2/v1/certs"


def push(n: int) -> dict[str, Any]:
    data = json.dumps({"emailAddress": "mia@acme.test", "historyId": str(1000 + n)})
    return {"subscription": "projects/p/subscriptions/gmail-push",
            "message": {"messageId": f"m-{n}", "data": base64.b64encode(data.encode()).decode(),
                        "publishTime": "2026-12-05T00:00:00Z"}}


def inbox_rows(path: Path) -> list[str]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT delivery_id FROM webhook_inbox ORDER BY rowid")]


@pytest.fixture
def certs_server() -> Iterator[CertsServer]:
    with CertsServer(KEY) as server:
        yield server


@pytest.fixture
def receiver(tmp_path: Path, certs_server: CertsServer,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """`crmsync run webhooks`'s app from the environment, embedded inbox, auth configured."""
    for name in ("CRMSYNC_NATS_URL", "CRMSYNC_POSTGRES_URL", "CRMSYNC_GMAIL_PUSH_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRMSYNC_WEBHOOK_INBOX", str(tmp_path / "inbox.db"))
    monkeypatch.setenv("CRMSYNC_GMAIL_PUSH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("CRMSYNC_GMAIL_PUSH_SERVICE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("CRMSYNC_GOOGLE_CERTS_URL", certs_server.url)
    with Server(webhooks_from_env(), lifespan=True) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_section8_a_push_with_a_valid_token_is_stored(receiver: httpx.Client, tmp_path: Path,
                                                      certs_server: CertsServer) -> None:
    for n in range(3):
        answer = receiver.post("/webhooks/gmail", json=push(n),
                               headers={"Authorization": f"Bearer {KEY.token()}"})
        assert answer.status_code == 202, answer.text
    assert inbox_rows(tmp_path / "inbox.db") == ["gmail:m-0", "gmail:m-1", "gmail:m-2"]
    assert certs_server.requests == 1  # cached across pushes


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer " + FORGER.token()}, 401),  # bad signature
    ({"Authorization": "Bearer " + KEY.token(exp=1_700_000_000, iat=1_699_996_400)}, 401),
    ({"Authorization": "Bearer " + KEY.token(aud="https://elsewhere.test/push")}, 403),
    ({"Authorization": "Bearer " + KEY.token(email="attacker@x.iam.gserviceaccount.com")}, 403),
])
def test_section8_refused_pushes_store_nothing(receiver: httpx.Client, tmp_path: Path,
                                               headers: dict[str, str], status: int) -> None:
    with capture_logs() as logs:
        answers = [receiver.post("/webhooks/gmail", json=push(n), headers=headers)
                   for n in range(5)]
    assert [a.status_code for a in answers] == [status] * 5
    assert all(a.json() == {"detail": a.json()["detail"]} for a in answers)  # no token echoed
    assert inbox_rows(tmp_path / "inbox.db") == []
    assert [e["status"] for e in logs if e["event"] == "webhook_refused"] == [status] * 5


def test_section8_production_without_an_audience_disables_the_route(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_GMAIL_PUSH_AUDIENCE", raising=False)
    monkeypatch.delenv("CRMSYNC_GMAIL_PUSH_AUTH", raising=False)
    path = tmp_path / "inbox.db"
    with capture_logs() as logs:
        auth = gmail_push_auth(production=True)
    assert [e["log_level"] for e in logs if e["event"] == "gmail_push_route_disabled"] == ["error"]
    app = webhook_app(SqliteInbox(str(path)), shared_client_state("state"), auth)
    with Server(app, lifespan=True) as server, httpx.Client(base_url=server.url) as client:
        answer = client.post("/webhooks/gmail", json=push(1),
                             headers={"Authorization": f"Bearer {KEY.token()}"})
    assert answer.status_code == 503 and "retry-after" in answer.headers
    assert inbox_rows(path) == []


@pytest.mark.parametrize(("production", "setting"), [(True, "off"), (False, "on"),
                                                     (False, "off")])
def test_section8_unauthenticated_pushes_only_when_chosen_or_embedded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, production: bool, setting: str) -> None:
    monkeypatch.delenv("CRMSYNC_GMAIL_PUSH_AUDIENCE", raising=False)
    monkeypatch.setenv("CRMSYNC_GMAIL_PUSH_AUTH", setting)
    path = tmp_path / "inbox.db"
    with capture_logs() as logs:
        auth = gmail_push_auth(production=production)
    assert auth is None
    assert [e["log_level"] for e in logs if e["event"] == "gmail_push_unauthenticated"] == [
        "warning"]
    app = webhook_app(SqliteInbox(str(path)), shared_client_state("state"), auth)
    with Server(app, lifespan=True) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/webhooks/gmail", json=push(1)).status_code == 202
    assert inbox_rows(path) == ["gmail:m-1"]
