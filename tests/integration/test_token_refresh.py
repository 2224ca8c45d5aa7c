"""OAuth token refresh on a provider's 401 (issue #4), over real HTTP on loopback: the
refresh-token grant at a local token endpoint, the new token written back to the encrypted
credential store (SQLite), the provider call retried once; a refused refresh token fails the
delivery at once with a clear reason and no secret anywhere."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from gmail_fake import GMAIL, FakeGmail
from oauth_fake import FakeTokenEndpoint
from sync_fakes import FakeWorkQueue

from adapters.credentials.store import KEY_ENV
from adapters.errors import CredentialsRejected, ProviderError
from adapters.providers.oauth import StoredOAuthToken, TokenEndpoint
from domain import events as ev
from runners.bootstrap.settings import load_settings
from runners.entrypoints.sync_loop import LoopOptions, process
from runners.entrypoints.sync_runner import ConfiguredSources, token_endpoints
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

OLD_TOKEN, REFRESH = "ya29.old-expired-token", "1//refresh-SECRET-token"


def raw(i: int) -> bytes:
    return (f"From: sender{i}@ext.test\r\nTo: {GMAIL}\r\nSubject: hello {i}\r\n"
            f"Message-ID: <r{i}@ext.test>\r\nDate: Mon, 04 Jan 2010 10:00:00 +0000\r\n\r\n"
            f"body {i}\r\n").encode()


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    opened = Engine.open_sqlite(str(tmp_path / "crm.db"))
    report = opened.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in [
        {"cmd": "AddUser", "user": "mia", "email": GMAIL, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": GMAIL, "credentials": {"access_token": OLD_TOKEN, "refresh_token": REFRESH,
                                           "expires_at": "2026-03-01T11:00:00Z"}}]])
    assert not report.rejected, report.rejected
    yield opened
    opened.close()


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail([raw(i) for i in range(10)])
    yield fake
    fake.close()


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    fake = FakeTokenEndpoint(refresh_tokens={REFRESH})
    yield fake
    fake.close()


def worker_for(engine: Engine, gmail: FakeGmail, endpoint: FakeTokenEndpoint) -> SyncWorker:
    tokens = {"gmail": TokenEndpoint("gmail", endpoint.url, "crm-client", "client-S3CRET")}

    def still_set(tenant: str, mailbox: str) -> bool:
        found = engine.state(tenant).mailboxes.get(mailbox)
        return found is not None and found.credentials_set

    sources = ConfiguredSources(engine.credentials, gmail_url=gmail.url, tokens=tokens,
                                still_set=still_set)
    return SyncWorker(engine, sources)


def stored(engine: Engine) -> dict[str, Any]:
    assert engine.credentials is not None
    found = engine.credentials.get("acme", "mia-gmail")
    assert found is not None
    return found


def test_a_401_refreshes_the_token_stores_it_and_retries(engine: Engine, gmail: FakeGmail,
                                                        endpoint: FakeTokenEndpoint) -> None:
    gmail.add(3, minutes_ago=30)
    gmail.valid_tokens = {"ya29.fresh-1"}
    worker = worker_for(engine, gmail, endpoint)
    worker.catch_up()  # the first sync: its first request is refused, refreshed, retried
    synced = [e for _, e in engine.events("acme") if isinstance(e, ev.MessageSynced)]
    assert len(synced) == 3
    assert endpoint.requests == [{"grant_type": "refresh_token", "refresh_token": REFRESH,
                                  "client_id": "crm-client", "client_secret": "client-S3CRET"}]
    assert gmail.tokens_seen[:2] == [OLD_TOKEN, "ya29.fresh-1"]
    credentials = stored(engine)
    assert credentials["access_token"] == "ya29.fresh-1"
    assert credentials["refresh_token"] == REFRESH  # Google does not rotate: kept
    assert datetime.fromisoformat(credentials["expires_at"]) > datetime.now(UTC)
    # the next sync reads the stored token: no second refresh
    gmail.add(2)
    outcome = worker.handle(delivery(1))
    assert outcome.synced == 2 and len(endpoint.requests) == 1
    assert set(gmail.tokens_seen[2:]) == {"ya29.fresh-1"}
    # no token ever reaches the event log
    log = b"".join(e.model_dump_json().encode() for _, e in engine.events("acme"))
    assert b"ya29." not in log and REFRESH.encode() not in log


def delivery(n: int) -> Any:
    from adapters.deliveries.work_queue import Delivery

    return Delivery("gmail", f"gmail:{n}", orjson.dumps(
        {"delivery_id": f"gmail:{n}", "subscription": "s", "email_address": GMAIL,
         "history_id": n}), 1)


def test_a_rotated_refresh_token_is_stored_too(engine: Engine, gmail: FakeGmail) -> None:
    endpoint = FakeTokenEndpoint(refresh_tokens={REFRESH}, rotate=True)
    try:
        gmail.valid_tokens = {"ya29.fresh-1"}
        worker_for(engine, gmail, endpoint).catch_up()
        assert stored(engine)["refresh_token"] == "1//rotated-1"
        assert stored(engine)["access_token"] == "ya29.fresh-1"
    finally:
        endpoint.close()


def test_a_refused_refresh_token_fails_the_delivery_with_the_reason_and_no_secret(
        engine: Engine, gmail: FakeGmail) -> None:
    endpoint = FakeTokenEndpoint(refresh_tokens={"1//some-other-token"})
    try:
        gmail.valid_tokens = {"ya29.never-issued"}
        worker = worker_for(engine, gmail, endpoint)
        worker.catch_up()  # the first sync fails: logged, retried later
        queue = FakeWorkQueue()
        asyncio.run(queue.publish("gmail", "gmail:1", delivery(1).payload))

        async def once() -> str:
            (fetched,) = await queue.fetch(1, 0)
            return await process(worker, queue, fetched, LoopOptions(max_attempts=5))

        assert asyncio.run(once()) == "dead"  # at once: retrying cannot help
        (dead,) = [e for _, e in engine.events("acme")
                   if isinstance(e, ev.DeliveryDeadLettered)]
        assert dead.attempts == 1 and "invalid_grant" in dead.error
        assert "reconnect the mailbox" in dead.error
        (letter,) = asyncio.run(queue.dead_letters())
        for text in (dead.error, letter.error):
            assert REFRESH not in text and "client-S3CRET" not in text and "ya29." not in text
        assert stored(engine)["access_token"] == OLD_TOKEN  # nothing was overwritten
    finally:
        endpoint.close()


def test_token_endpoint_errors_name_no_secret(endpoint: FakeTokenEndpoint) -> None:
    wrong_client = TokenEndpoint("gmail", endpoint.url, "crm-client", "not-the-secret")
    with pytest.raises(ProviderError) as info:
        wrong_client.exchange(REFRESH)
    assert type(info.value) is ProviderError and info.value.status == 401
    assert "invalid_client" in str(info.value) and "not-the-secret" not in str(info.value)
    with pytest.raises(CredentialsRejected) as refused:
        TokenEndpoint("gmail", endpoint.url, "crm-client", "client-S3CRET").exchange(
            "1//revoked-token")
    assert "1//revoked-token" not in str(refused.value) and "[secret]" in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__context__ is None
    with pytest.raises(ProviderError, match="ConnectError"):
        TokenEndpoint("gmail", "http://127.0.0.1:9/token", "c", "s").exchange(REFRESH)
    with pytest.raises(ValueError):
        TokenEndpoint("gmail", "http://token.example/token", "c", "s")  # not https


def test_a_refresh_never_outlives_a_disconnection(engine: Engine,
                                                  endpoint: FakeTokenEndpoint) -> None:
    assert engine.credentials is not None
    token = StoredOAuthToken(engine.credentials, "acme", "mia-gmail", stored(engine),
                             TokenEndpoint("gmail", endpoint.url, "crm-client", "client-S3CRET"),
                             provider="gmail", still_set=lambda: False)
    with pytest.raises(CredentialsRejected, match="removed"):
        token.refresh()
    assert engine.credentials.get("acme", "mia-gmail") is None
    # credentials erased before the refresh: nothing is asked, nothing written
    asked = len(endpoint.requests)
    with pytest.raises(CredentialsRejected, match="removed"):
        StoredOAuthToken(engine.credentials, "acme", "mia-gmail",
                         {"access_token": OLD_TOKEN, "refresh_token": REFRESH},
                         TokenEndpoint("gmail", endpoint.url, "crm-client", "client-S3CRET"),
                         provider="gmail").refresh()
    assert len(endpoint.requests) == asked and engine.credentials.get("acme", "mia-gmail") is None


def test_token_endpoints_come_from_the_environment() -> None:
    found = token_endpoints({"CRMSYNC_GOOGLE_CLIENT_ID": "g-id", "CRMSYNC_GOOGLE_CLIENT_SECRET":
                             "g-secret", "CRMSYNC_MICROSOFT_CLIENT_ID": "m-id",
                             "CRMSYNC_MICROSOFT_TOKEN_URL": "https://login.example/t/token"})
    assert found["gmail"].url == "https://oauth2.googleapis.com/token"
    assert found["outlook"].url == "https://login.example/t/token"
    assert found["outlook"].provider == "graph" and "secret" not in repr(found["gmail"])
    assert token_endpoints({}) == {}  # no client id: no refresh


def test_the_outbox_refreshes_a_refused_token_stores_it_and_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: FakeTokenEndpoint) -> None:
    """S7 through the outbox worker: the stored access token has expired (401); the worker
    renews it with the stored refresh token, writes it back and sends, in one attempt."""
    from outbound_servers import MAILBOX, TOKEN, GmailServer

    from adapters.tracking.outbox_sqlite import SqliteOutboxTracking
    from runners.services.outbox import Outbox, provider_clients

    class ExpiringGmail(GmailServer):
        def handle(self, method: str, path: str, query: dict[str, str],
                   headers: dict[str, str], body: bytes) -> Any:
            if headers.get("Authorization") == f"Bearer {OLD_TOKEN}":
                return 401, {}, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}
            return super().handle(method, path, query, {**headers, "Authorization":
                                  f"Bearer {TOKEN}"} if headers.get("Authorization") ==
                                  f"Bearer {fresh[0]}" else headers, body)

    fresh: list[str] = []
    endpoint.on_issue = fresh.append
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    db = str(tmp_path / "crm.db")
    engine = Engine.open_sqlite(db)
    server = ExpiringGmail()
    try:
        report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in [
            {"cmd": "AddUser", "user": "mia", "email": MAILBOX, "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
             "provider": "gmail", "address": MAILBOX,
             "credentials": {"access_token": OLD_TOKEN, "refresh_token": REFRESH}},
            {"cmd": "SendEmail", "user": "mia", "mailbox": "mia-gmail", "kind": "single",
             "to": ["carla@customer.test"], "subject": "Offer", "body": "Hello Carla"}]],
            now=datetime.now(UTC))
        assert not report.rejected, report.rejected
        tokens = {"gmail": TokenEndpoint("gmail", endpoint.url, "crm-client", "client-S3CRET")}
        clients = provider_clients(load_settings({"CRMSYNC_GMAIL_API_URL": server.origin}),
                                   engine.credentials, lambda tenant, mailbox: True, tokens)
        worker = Outbox(engine, SqliteOutboxTracking(db), clients)
        assert worker.round() == 1
        assert len(server.messages) == 1  # sent, at the first attempt
        assert fresh == ["ya29.fresh-1"]
        assert engine.credentials is not None
        stored = engine.credentials.get("acme", "mia-gmail")
        assert stored is not None and stored["access_token"] == "ya29.fresh-1"
        assert stored["refresh_token"] == REFRESH
        state = engine.state("acme")
        assert [m.delivery_status for m in state.messages.values()] == ["sent"]
    finally:
        server.close()
        engine.close()


def test_contact_sync_refreshes_a_refused_graph_token_and_stores_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: FakeTokenEndpoint) -> None:
    """The Exchange contact sync reads the user's Outlook mailbox token: a 401 renews it with
    the stored refresh token (written back) and the call succeeds."""
    from graph_contacts_server import GraphBook, graph_contacts_app
    from loopback import Server

    from runners.entrypoints.contacts_runner import graph_clients

    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    engine = Engine.open_sqlite(str(tmp_path / "crm.db"))
    book = GraphBook()
    book.put({"displayName": "Ada Lovelace",
              "emailAddresses": [{"name": "Ada", "address": "ada@example.com"}]})
    try:
        report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in [
            {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "mia-outlook", "user": "mia",
             "provider": "outlook", "address": "mia@acme.test",
             "credentials": {"access_token": OLD_TOKEN, "refresh_token": REFRESH}}]])
        assert not report.rejected, report.rejected
        with Server(graph_contacts_app(book, "ya29.fresh-1")) as server:
            tokens = {"outlook": TokenEndpoint("graph", endpoint.url, "crm-client",
                                               "client-S3CRET")}
            client = graph_clients(engine, server.url + "/v1.0", tokens, backoff=0.01)(
                "acme", "mia")
            assert client is not None
            page = client.contacts_delta(None, None)
            client.close()
        assert len(page.contacts) == 1 and "Ada Lovelace" in str(page.contacts[0].fields)
        assert engine.credentials is not None
        stored = engine.credentials.get("acme", "mia-outlook")
        assert stored is not None and stored["access_token"] == "ya29.fresh-1"
        assert len(endpoint.requests) == 1
    finally:
        engine.close()
