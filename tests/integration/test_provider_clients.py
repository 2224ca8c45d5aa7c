"""The Gmail and Graph provider clients over real HTTP on loopback (issue #4).

A small `http.server` in a thread answers with the documented shapes: Graph over TLS (its delta
links must be https) with a throwaway self-signed certificate made by the `openssl` command, the
delta pages and message resource read from the shared corpus (not copied, for licensing);
Gmail over plain HTTP with history.list / messages.get / messages.list / getProfile bodies built
after the v1 discovery document's schemas.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from services import corpus_file, missing

from adapters.errors import (
    CredentialsRejected,
    CursorExpired,
    MailboxGone,
    ProviderError,
    ProviderThrottled,
)
from adapters.providers.gmail.client import GmailClient
from adapters.providers.graph.client import GraphClient

pytestmark = pytest.mark.integration

TOKEN = "ya29.secret-access-token-value"


def corpus(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(corpus_file("webhooks", name).read_bytes())
    return value


# --- the test server ------------------------------------------------------------------------------

Reply = tuple[int, dict[str, str], Any]  # status, headers, JSON body (None: empty)


class Request:
    def __init__(self, path: str, query: dict[str, list[str]], headers: Any,
                 method: str = "GET", body: bytes = b"") -> None:
        self.path, self.query = path, {k: v[0] for k, v in query.items()}
        self.headers = dict(headers.items())
        self.prefer = headers.get_all("Prefer") or []
        self.method, self.body = method, body

    def json(self) -> Any:
        return json.loads(self.body)


class FakeProvider:
    """Answers every request (GET, POST, PATCH, DELETE) with `self.route(request)`; keeps the
    requests it saw."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.route: Callable[[Request], Reply] = lambda r: (404, {}, None)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(unquote(split.path), parse_qs(split.query), self.headers,
                                  self.command, self.rfile.read(length) if length else b"")
                provider.requests.append(request)
                status, headers, body = provider.route(request)
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                self.do_GET()

            def do_PATCH(self) -> None:
                self.do_GET()

            def do_DELETE(self) -> None:
                self.do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.origin = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def error(status: int, code: str, message: str = "", headers: dict[str, str] | None = None
          ) -> Reply:
    return status, headers or {}, {"error": {"code": code, "message": message or code}}


def google_error(status: int, reason: str, message: str) -> Reply:
    return status, {}, {"error": {"code": status, "message": message, "status": reason.upper(),
                                  "errors": [{"reason": reason, "message": message}]}}


def assert_no_token(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        assert TOKEN not in str(seen) and TOKEN not in repr(seen)
        seen = seen.__cause__ or seen.__context__


def token() -> str:
    return TOKEN


# --- Gmail ----------------------------------------------------------------------------------------

MAILBOX = "mia@acme.test"
USER = f"/gmail/v1/users/{MAILBOX}"


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def gmail_message(message_id: str, thread_id: str, labels: list[str] | None = None,
                  millis: int = 1_700_000_000_000) -> dict[str, Any]:
    """A `Message` in format=full, as the discovery document describes it."""
    return {
        "id": message_id, "threadId": thread_id, "labelIds": labels or ["INBOX", "UNREAD"],
        "snippet": "Hello", "historyId": "480", "internalDate": str(millis),
        "sizeEstimate": 1200,
        "payload": {
            "partId": "", "mimeType": "multipart/alternative", "filename": "",
            "headers": [{"name": "From", "value": "Ann Lee <ann@client.test>"},
                        {"name": "To", "value": MAILBOX},
                        {"name": "Subject", "value": f"About {message_id}"},
                        {"name": "Message-ID", "value": f"<{message_id}@client.test>"}],
            "body": {"size": 0},
            "parts": [{"partId": "0", "mimeType": "text/plain", "filename": "",
                       "headers": [{"name": "Content-Type", "value": "text/plain; charset=UTF-8"}],
                       "body": {"size": 5, "data": b64url("Hello")}}],
        },
    }


def history(records: list[dict[str, Any]], history_id: str, token: str | None = None
            ) -> dict[str, Any]:
    page: dict[str, Any] = {"history": records, "historyId": history_id}
    if token:
        page["nextPageToken"] = token
    return page


def added(message_id: str, thread_id: str) -> dict[str, Any]:
    return {"id": "401", "messages": [{"id": message_id, "threadId": thread_id}],
            "messagesAdded": [{"message": {"id": message_id, "threadId": thread_id,
                                           "labelIds": ["INBOX"]}}]}


def gmail_messages(request: Request) -> Reply | None:
    if request.path.startswith(f"{USER}/messages/"):
        assert request.query == {"format": "full"}
        message_id = request.path.rsplit("/", 1)[1]
        if message_id == "gone":
            return google_error(404, "notFound", "Requested entity was not found.")
        return 200, {}, gmail_message(message_id, f"t-{message_id}")
    if request.path == f"{USER}/profile":
        return 200, {}, {"emailAddress": MAILBOX, "messagesTotal": 3, "threadsTotal": 2,
                         "historyId": "900"}
    return None


@pytest.fixture
def gmail() -> Iterator[tuple[FakeProvider, GmailClient]]:
    with FakeProvider() as server:
        client = GmailClient(token, server.origin, page_size=2, max_retries=2, backoff=0.05)
        yield server, client
        client.close()


def test_gmail_history_pages_and_messages(gmail: tuple[FakeProvider, GmailClient]) -> None:
    server, client = gmail
    pages = {
        None: history([added("m1", "t1"), added("m2", "t1")], "450", "page-2"),
        "page-2": history([
            {"id": "460", "labelsAdded": [{"message": {"id": "m3"}, "labelIds": ["STARRED"]}]},
            {"id": "470", "messagesDeleted": [{"message": {"id": "m4"}}]},
            added("gone", "t9")], "480"),
    }

    def route(request: Request) -> Reply:
        if request.path == f"{USER}/history":
            assert request.query["startHistoryId"] == "400"
            assert request.query["maxResults"] == "2"
            return 200, {}, pages[request.query.get("pageToken")]
        reply = gmail_messages(request)
        assert reply is not None, request.path
        return reply

    server.route = route
    first = client.changes_since(MAILBOX, "400")
    assert first.more and first.new_cursor == "400:page-2"
    assert [(m.id, m.thread_id, m.from_) for m in first.messages] == [
        ("m1", "t-m1", "ann@client.test"), ("m2", "t-m2", "ann@client.test")]
    assert first.messages[0].body == "Hello" and first.messages[0].read is False
    assert first.messages[0].sent_at == datetime.fromtimestamp(1_700_000_000, UTC)
    second = client.changes_since(MAILBOX, first.new_cursor)
    assert not second.more and second.new_cursor == "480"
    assert [m.id for m in second.messages] == ["m3"]
    assert second.deleted_ids == ["m4", "gone"]  # "gone" was deleted before we fetched it
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in server.requests)


def test_gmail_start_cursor_and_backfill(gmail: tuple[FakeProvider, GmailClient]) -> None:
    server, client = gmail
    since = datetime(2024, 5, 1, tzinfo=UTC)
    listing = {
        None: {"messages": [{"id": "b3", "threadId": "t3"}, {"id": "b2", "threadId": "t2"}],
               "nextPageToken": "older", "resultSizeEstimate": 3},
        "older": {"messages": [{"id": "b1", "threadId": "t1"}], "resultSizeEstimate": 3},
    }

    def route(request: Request) -> Reply:
        if request.path == f"{USER}/messages":
            assert request.query["q"] == f"after:{int(since.timestamp()) - 1}"
            return 200, {}, listing[request.query.get("pageToken")]
        reply = gmail_messages(request)
        assert reply is not None, request.path
        return reply

    server.route = route
    start = client.changes_since(MAILBOX, None)
    assert start.new_cursor == "900" and not start.more and start.messages == []
    page = client.backfill(MAILBOX, since)
    assert [m.id for m in page.messages] == ["b3", "b2"] and page.next_page_token == "older"
    last = client.backfill(MAILBOX, since, page.next_page_token)
    assert [m.id for m in last.messages] == ["b1"] and last.next_page_token is None
    assert client.fetch_message(MAILBOX, "gone") is None


def test_gmail_old_history_id_is_cursor_expired(gmail: tuple[FakeProvider, GmailClient]
                                                ) -> None:
    server, client = gmail

    def route(request: Request) -> Reply:
        if request.path == f"{USER}/history":
            return google_error(404, "notFound", "Requested entity was not found.")
        reply = gmail_messages(request)
        assert reply is not None
        return reply

    server.route = route
    with pytest.raises(CursorExpired) as info:
        client.changes_since(MAILBOX, "12")
    assert info.value.status == 404 and "12" in str(info.value)
    assert_no_token(info.value)


def test_gmail_unknown_mailbox_is_mailbox_gone(gmail: tuple[FakeProvider, GmailClient]) -> None:
    server, client = gmail
    server.route = lambda r: google_error(404, "notFound", "Requested entity was not found.")
    with pytest.raises(MailboxGone):
        client.changes_since(MAILBOX, "12")
    server.route = lambda r: google_error(400, "failedPrecondition", "Mail service not enabled")
    with pytest.raises(MailboxGone) as info:
        client.fetch_message(MAILBOX, "m1")
    assert "Mail service not enabled" in str(info.value)
    assert [r.path for r in server.requests][-2:] == [f"{USER}/messages/m1", f"{USER}/profile"]


def test_gmail_retries_429_honouring_retry_after(gmail: tuple[FakeProvider, GmailClient]
                                                 ) -> None:
    server, client = gmail
    answers = [(429, {"Retry-After": "0.1"}, None), (429, {"Retry-After": "0.1"}, None)]

    def route(request: Request) -> Reply:
        if answers:
            return answers.pop(0)
        reply = gmail_messages(request)
        assert reply is not None
        return reply

    server.route = route
    began = time.monotonic()
    assert client.fetch_message(MAILBOX, "m1") is not None
    assert time.monotonic() - began >= 0.2
    assert len(server.requests) == 3


def test_gmail_exhausted_retries_are_throttled(gmail: tuple[FakeProvider, GmailClient]) -> None:
    server, client = gmail
    server.route = lambda r: (429, {"Retry-After": "0.1"},
                              {"error": {"code": 429, "message": f"slow down {TOKEN}"}})
    with pytest.raises(ProviderThrottled) as info:
        client.changes_since(MAILBOX, "400")
    assert info.value.retry_after == pytest.approx(0.1) and info.value.status == 429
    assert len(server.requests) == 3  # the first try and max_retries=2
    assert_no_token(info.value)
    # a wait longer than max_retry_wait is not slept through
    server.route = lambda r: (503, {"Retry-After": "3600"}, None)
    began = time.monotonic()
    with pytest.raises(ProviderThrottled) as info:
        client.fetch_message(MAILBOX, "m1")
    assert info.value.retry_after == 3600 and time.monotonic() - began < 5


def test_gmail_other_failures_are_provider_errors(gmail: tuple[FakeProvider, GmailClient]
                                                  ) -> None:
    server, client = gmail
    server.route = lambda r: (500, {}, {"error": {"code": 500, "message": f"oops {TOKEN}"}})
    with pytest.raises(ProviderError) as info:
        client.changes_since(MAILBOX, "400")
    assert type(info.value) is ProviderError and info.value.status == 500
    assert_no_token(info.value)
    server.route = lambda r: (200, {}, {"history": "nope", "historyId": "5"})
    with pytest.raises(ProviderError, match="unreadable response"):
        client.changes_since(MAILBOX, "400")
    closed = GmailClient(token, "http://127.0.0.1:9", max_retries=0)  # nothing listens there
    with pytest.raises(ProviderError, match="ConnectError") as info:
        closed.fetch_message(MAILBOX, "m1")
    assert_no_token(info.value)
    closed.close()


# --- Microsoft Graph ------------------------------------------------------------------------------

GRAPH_ROOT = "https://graph.microsoft.com/v1.0"
GUSER = f"/v1.0/users/{MAILBOX}"


@pytest.fixture
def graph(certificate: tuple[Path, Path]) -> Iterator[tuple[FakeProvider, GraphClient]]:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with FakeProvider(server_tls) as server:
        client = GraphClient(token, f"{server.origin}/v1.0", max_retries=2, backoff=0.05,
                             verify=ssl.create_default_context(cafile=str(cert)))
        yield server, client
        client.close()


def rebased(page: dict[str, Any], origin: str) -> dict[str, Any]:
    """A corpus page with its links pointing at the test server instead of graph.microsoft.com."""
    for key in ("@odata.nextLink", "@odata.deltaLink"):
        if key in page:
            page[key] = page[key].replace(GRAPH_ROOT, f"{origin}/v1.0")
    return page


def graph_messages(request: Request) -> Reply | None:
    """GET /users/{mailbox}/messages/{id}: the corpus message resource under that id."""
    if not request.path.startswith(f"{GUSER}/messages/"):
        return None
    message_id = request.path.rsplit("/", 1)[1]
    if message_id == "gone":
        return error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    assert "internetMessageHeaders" in request.query["$select"]
    resource = corpus("msgraph-message-resource.json")
    resource.update(id=message_id, conversationId=f"conv-{message_id}",
                    internetMessageHeaders=[{"name": "In-Reply-To", "value": "<p@x.test>"}])
    return 200, {}, resource


def test_graph_delta_pages_chained_to_delta_link(graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    names = ["msgraph-delta-messages-1-nextlink.json", "msgraph-delta-messages-2-nextlink.json",
             "msgraph-delta-messages-3-deltalink.json",
             "msgraph-delta-messages-4-removed-deltalink.json"]
    pages = [rebased(corpus(name), server.origin) for name in names]
    pages[3]["value"].append({  # a complete item is used as it is, not fetched again
        **corpus("msgraph-message-resource.json"), "id": "full-1", "conversationId": "conv-9"})
    pages[3]["value"].append({"id": "moved-1", "@removed": {"reason": "changed"}})

    def route(request: Request) -> Reply:
        if request.path == f"{GUSER}/mailFolders/inbox/messages/delta":
            assert "conversationId" in request.query["$select"]
            return 200, {}, pages[0]
        if request.path.startswith("/v1.0/me/mailfolders("):
            if "$deltatoken" in request.query:
                return 200, {}, pages[3]
            following = {urlsplit(page["@odata.nextLink"]).query: pages[index + 1]
                         for index, page in enumerate(pages[:2])}
            return 200, {}, following["$skiptoken=" + request.query["$skiptoken"]]
        reply = graph_messages(request)
        assert reply is not None, request.path
        return reply

    server.route = route
    cursor, seen = None, []
    for expect_more in (True, True, False):
        page = client.changes_since(MAILBOX, cursor)
        assert page.more is expect_more
        seen += [(m.id, m.thread_id) for m in page.messages]
        cursor = page.new_cursor
    assert cursor == pages[2]["@odata.deltaLink"]
    assert seen == [("AAMkADNkNAAASq35xAAA=", "conv-AAMkADNkNAAASq35xAAA="),
                    ("AQMkADNkNAAAVRMKAAAAA==", "conv-AQMkADNkNAAAVRMKAAAAA=="),
                    ("AQMkADNkNAAAgWkAAAA", "conv-AQMkADNkNAAAgWkAAAA"),
                    ("AQMkADNkNAAAgWJAAAA", "conv-AQMkADNkNAAAgWJAAAA"),
                    ("AAMkADk0MGFkODE3LWEAAA=", "conv-AAMkADk0MGFkODE3LWEAAA=")]
    fetched = client.fetch_message(MAILBOX, "AAMkADNkNAAASq35xAAA=")
    assert fetched is not None and fetched.in_reply_to == "<p@x.test>"
    assert fetched.from_ == "adelev@contoso.OnMicrosoft.com" and fetched.read is True
    fetches = len(server.requests)
    later = client.changes_since(MAILBOX, cursor)
    assert not later.more and later.new_cursor == cursor
    assert [m.id for m in later.messages] == ["AAMkADNkNAAASq35xAAA=", "full-1"]
    assert later.messages[1].thread_id == "conv-9"
    assert len(server.requests) == fetches + 2  # the delta page and one fetch
    assert later.deleted_ids == [pages[3]["value"][0]["id"]]
    assert later.left_scope_ids == ["moved-1"]
    for request in server.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert 'IdType="ImmutableId"' in request.prefer


def test_graph_gone_delta_is_cursor_expired(graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    server.route = lambda r: error(410, "syncStateNotFound", "The sync state is gone.")
    with pytest.raises(CursorExpired) as info:
        client.changes_since(MAILBOX, f"{server.origin}/v1.0/me/messages/delta?$deltatoken=x")
    assert info.value.status == 410 and "syncStateNotFound" in str(info.value)
    assert "$deltatoken" not in str(info.value)
    assert_no_token(info.value)
    server.route = lambda r: error(400, "resyncRequired")
    with pytest.raises(CursorExpired):
        client.changes_since(MAILBOX, None)


def test_graph_missing_mailbox_is_mailbox_gone(graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    server.route = lambda r: error(404, "ErrorItemNotFound", "The object was not found.")
    with pytest.raises(MailboxGone):
        client.changes_since(MAILBOX, None)
    assert server.requests[-1].path == f"{GUSER}/mailFolders/inbox"
    server.route = lambda r: error(404, "MailboxNotEnabledForRESTAPI", "REST API is not yet "
                                   "supported for this mailbox.")
    with pytest.raises(MailboxGone, match="MailboxNotEnabledForRESTAPI"):
        client.fetch_message(MAILBOX, "m1")

    def message_missing(request: Request) -> Reply:
        if request.path == f"{GUSER}/mailFolders/inbox":
            return 200, {}, {"id": "inbox-id"}
        reply = graph_messages(request)
        assert reply is not None
        return reply

    server.route = message_missing
    assert client.fetch_message(MAILBOX, "gone") is None


def test_graph_throttling(graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    answers = [error(503, "ServiceUnavailable", headers={"Retry-After": "0.1"})]

    def route(request: Request) -> Reply:
        if answers:
            return answers.pop(0)
        reply = graph_messages(request)
        assert reply is not None
        return reply

    server.route = route
    message = client.fetch_message(MAILBOX, "m1")
    assert message is not None and message.thread_id == "conv-m1"
    server.route = lambda r: error(429, "TooManyRequests", headers={"Retry-After": "0.1"})
    with pytest.raises(ProviderThrottled) as info:
        client.fetch_message(MAILBOX, "m1")
    assert info.value.retry_after == pytest.approx(0.1)
    assert_no_token(info.value)


def test_graph_backfill_and_foreign_links(graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    resource = corpus("msgraph-message-resource.json")
    newer = {**resource, "id": "n2", "conversationId": "c2"}
    older = {**resource, "id": "n1", "conversationId": "c1"}
    next_link = f"{server.origin}/v1.0/users/{MAILBOX}/mailFolders/inbox/messages?$skip=1"

    def route(request: Request) -> Reply:
        assert request.path == f"{GUSER}/mailFolders/inbox/messages"
        if "$skip" in request.query:
            return 200, {}, {"value": [older]}
        assert request.query["$filter"] == "receivedDateTime ge 2018-09-01T00:00:00Z"
        assert request.query["$orderby"] == "receivedDateTime desc"
        return 200, {}, {"value": [newer], "@odata.nextLink": next_link}

    server.route = route
    page = client.backfill(MAILBOX, datetime(2018, 9, 1, tzinfo=UTC))
    assert [(m.id, m.thread_id) for m in page.messages] == [("n2", "c2")]
    last = client.backfill(MAILBOX, datetime(2018, 9, 1, tzinfo=UTC), page.next_page_token)
    assert [m.id for m in last.messages] == ["n1"] and last.next_page_token is None
    # a link to another host is refused: the token is never sent there
    server.route = lambda r: (200, {}, rebased(corpus("msgraph-delta-messages-3-deltalink.json"),
                                              "https://graph.example"))
    count = len(server.requests)
    with pytest.raises(ProviderError, match="outside"):
        client.changes_since(MAILBOX, None)
    with pytest.raises(ValueError):
        client.changes_since(MAILBOX, "https://evil.test/v1.0/me/messages/delta")
    assert len(server.requests) == count + 1


# --- push channels and token refresh ----------------------------------------------------------

CLIENT_STATE = "client-state-S3CRET-value"


def graph_subscription(body: dict[str, Any], ident: str = "7f105c7d-2dc5-4530-97cd") -> Reply:
    """Graph's answer: the subscription, with the clientState echoed as Graph does."""
    return 201, {}, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions"
                     "/$entity", "id": ident, "resource": body["resource"],
                     "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
                     "changeType": body["changeType"], "clientState": body["clientState"],
                     "notificationUrl": body["notificationUrl"],
                     "lifecycleNotificationUrl": body["lifecycleNotificationUrl"],
                     "expirationDateTime": "2026-03-04T11:00:00.1234567Z",
                     "creatorId": "8ee44408-0679-472c-bc2a-692812af3437"}


def test_graph_subscription_is_created_renewed_and_deleted(
        graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    live: dict[str, dict[str, Any]] = {}

    def route(request: Request) -> Reply:
        if request.method == "POST" and request.path == "/v1.0/subscriptions":
            body = request.json()
            live["sub-1"] = body
            return graph_subscription(body, "sub-1")
        if request.path.startswith("/v1.0/subscriptions/"):
            ident = request.path.rsplit("/", 1)[1]
            if ident not in live:
                return error(404, "ResourceNotFound", "The object was not found.")
            if request.method == "PATCH":
                live[ident]["expirationDateTime"] = request.json()["expirationDateTime"]
                return 200, {}, {"id": ident, "resource": live[ident]["resource"],
                                 "expirationDateTime": request.json()["expirationDateTime"],
                                 "clientState": CLIENT_STATE}
            if request.method == "DELETE":
                del live[ident]
                return 204, {}, None
        return error(400, "BadRequest", f"unexpected {request.method} {request.path}")

    server.route = route
    created = client.create_subscription(
        MAILBOX, notification_url="https://crm.example/webhooks/graph",
        lifecycle_url="https://crm.example/webhooks/graph", client_state=CLIENT_STATE,
        expires_at=datetime(2026, 3, 4, 11, 0, tzinfo=UTC))
    sent = server.requests[-1].json()
    assert sent == {"changeType": "created,updated,deleted",
                    "notificationUrl": "https://crm.example/webhooks/graph",
                    "lifecycleNotificationUrl": "https://crm.example/webhooks/graph",
                    "resource": f"/users/{MAILBOX}/messages",
                    "expirationDateTime": "2026-03-04T11:00:00.000Z",
                    "clientState": CLIENT_STATE}
    assert server.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert created.id == "sub-1" and created.resource == f"/users/{MAILBOX}/messages"
    assert created.expires_at == datetime(2026, 3, 4, 11, 0, 0, 123456, tzinfo=UTC)
    assert CLIENT_STATE not in repr(created)  # the echoed clientState is not kept
    renewed = client.renew_subscription("sub-1", datetime(2026, 3, 6, 9, 30, tzinfo=UTC))
    assert renewed is not None and renewed.expires_at == datetime(2026, 3, 6, 9, 30, tzinfo=UTC)
    assert server.requests[-1].method == "PATCH"
    assert server.requests[-1].json() == {"expirationDateTime": "2026-03-06T09:30:00.000Z"}
    assert client.delete_subscription("sub-1") is True
    assert client.delete_subscription("sub-1") is False  # already gone
    assert client.renew_subscription("sub-1", datetime(2026, 3, 7, tzinfo=UTC)) is None
    folder = client.subscription_resource(MAILBOX, "inbox")
    assert folder == f"/users/{MAILBOX}/mailFolders('inbox')/messages"


def test_graph_subscription_refusals_are_provider_errors_without_secrets(
        graph: tuple[FakeProvider, GraphClient]) -> None:
    server, client = graph
    server.route = lambda r: error(400, "InvalidRequest", "Subscription validation request "
                                   f"failed. Notification endpoint must respond with 200 OK "
                                   f"({CLIENT_STATE})")
    with pytest.raises(ProviderError) as info:
        client.create_subscription(
            MAILBOX, notification_url="https://crm.example/webhooks/graph",
            lifecycle_url="https://crm.example/webhooks/graph", client_state=CLIENT_STATE,
            expires_at=datetime(2026, 3, 4, tzinfo=UTC))
    assert info.value.status == 400 and "validation request failed" in str(info.value)
    assert_no_token(info.value)
    server.route = lambda r: error(404, "MailboxNotEnabledForRESTAPI", "REST API is not yet "
                                   "supported for this mailbox.")
    with pytest.raises(MailboxGone):
        client.create_subscription(
            MAILBOX, notification_url="https://crm.example/webhooks/graph",
            lifecycle_url="https://crm.example/webhooks/graph", client_state=CLIENT_STATE,
            expires_at=datetime(2026, 3, 4, tzinfo=UTC))


def test_gmail_watch_with_label_filter_and_stop(gmail: tuple[FakeProvider, GmailClient]) -> None:
    server, client = gmail

    def route(request: Request) -> Reply:
        if request.method == "POST" and request.path == f"{USER}/watch":
            return 200, {}, {"historyId": "1234", "expiration": "1772449200000"}
        if request.method == "POST" and request.path == f"{USER}/stop":
            return 204, {}, None
        return google_error(400, "badRequest", "unexpected")

    server.route = route
    watch = client.watch(MAILBOX, "projects/crm/topics/gmail", ["Label_7", "INBOX"])
    assert server.requests[-1].json() == {"topicName": "projects/crm/topics/gmail",
                                          "labelIds": ["Label_7", "INBOX"],
                                          "labelFilterBehavior": "include"}
    assert watch.id is None and watch.history_id == 1234
    assert watch.expires_at == datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    assert "projects/crm/topics/gmail" in watch.resource and "Label_7" in watch.resource
    client.watch(MAILBOX, "projects/crm/topics/gmail")
    assert server.requests[-1].json() == {"topicName": "projects/crm/topics/gmail"}
    client.stop(MAILBOX)
    assert (server.requests[-1].method, server.requests[-1].path) == ("POST", f"{USER}/stop")
    server.route = lambda r: (google_error(403, "forbidden", "Error sending test message to "
                                           "Cloud PubSub: User not authorized")
                              if r.path.endswith("/watch") else gmail_messages(r) or
                              google_error(404, "notFound", "nope"))
    with pytest.raises(ProviderError, match="not authorized") as info:
        client.watch(MAILBOX, "projects/crm/topics/gmail")
    assert type(info.value) is ProviderError and info.value.status == 403


def test_a_401_refreshes_the_token_once_and_retries_the_call() -> None:
    tokens = ["ya29.expired-token", "ya29.fresh-token"]
    refreshed: list[str] = []

    def current() -> str:
        return tokens[0]

    def refresh() -> None:
        refreshed.append(tokens.pop(0))

    with FakeProvider() as server:
        def route(request: Request) -> Reply:
            if request.headers["Authorization"] != "Bearer ya29.fresh-token":
                return google_error(401, "authError", "Request had invalid authentication "
                                    "credentials: ya29.expired-token")
            reply = gmail_messages(request)
            assert reply is not None
            return reply

        server.route = route
        client = GmailClient(current, server.origin, refresh=refresh)
        assert client.fetch_message(MAILBOX, "m1") is not None
        assert refreshed == ["ya29.expired-token"]
        assert [r.headers["Authorization"] for r in server.requests] == [
            "Bearer ya29.expired-token", "Bearer ya29.fresh-token"]
        # a 401 that stands after the one refresh: CredentialsRejected, no token in the text
        tokens[:] = ["ya29.still-refused", "ya29.also-refused"]
        with pytest.raises(CredentialsRejected) as info:
            client.fetch_message(MAILBOX, "m1")
        assert len(refreshed) == 2 and info.value.status == 401
        assert "reconnect" in str(info.value) and "ya29." not in str(info.value)
        # without a refresh callable a 401 is CredentialsRejected at once
        plain = GmailClient(lambda: "ya29.expired-token", server.origin)
        count = len(server.requests)
        with pytest.raises(CredentialsRejected):
            plain.fetch_message(MAILBOX, "m1")
        assert len(server.requests) == count + 1
        client.close()
        plain.close()
