"""A local Microsoft Graph mail API for the sync-runner tests, over TLS on loopback (the delta
parser takes only https links): one mailbox's inbox (`messages/delta` with a deltaLink, the
backfill listing) and change-notification subscriptions (`POST /subscriptions` performs the
validation handshake against the notification URL, as Graph does, before it answers; PATCH
renews, DELETE removes). `make_certificate` makes the throwaway certificate with `openssl`."""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
from services import missing


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key); skips when openssl is absent."""
    if shutil.which("openssl") is None:
        missing("the openssl command is needed to make a test certificate")
    cert, key = folder / "graph-cert.pem", folder / "graph-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class FakeGraph:
    """The inbox of `address` and its subscriptions. Every message added gets the next version;
    a deltaLink carries the version it was made at. `subscriptions`: id -> the POSTed body
    (its `expirationDateTime` updated by PATCH); `validated`: the notification URLs whose
    handshake succeeded; `requests`: (method, path) of every request."""

    def __init__(self, address: str, cert: Path, key: str | Path) -> None:
        self.address = address
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.version = 0
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.validated: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.made = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                fake.requests.append((self.command, unquote(split.path)))
                status, answer = fake.route(self.command, unquote(split.path), query, body)
                raw = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

            def do_DELETE(self) -> None:
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.origin}/v1.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, n: int, minutes_ago: float = 5.0) -> list[str]:
        ids = []
        with self.lock:
            for _ in range(n):
                self.version += 1
                mid = f"AAMk-{self.version:04d}="
                when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                self.messages.append((self.version, {
                    "id": mid, "conversationId": f"conv-{self.version}",
                    "internetMessageId": f"<g{self.version}@ext.test>",
                    "from": {"emailAddress": {"address": f"sender{self.version}@ext.test"}},
                    "toRecipients": [{"emailAddress": {"address": self.address}}],
                    "subject": f"hello {self.version}", "body": {"contentType": "text",
                                                                 "content": "hi"},
                    "sentDateTime": when, "receivedDateTime": when, "isRead": False,
                    "categories": []}))
                ids.append(mid)
        return ids

    def _delta_link(self) -> str:
        user = quote(self.address, safe="@")
        return (f"{self.url}/users/{user}/mailFolders/inbox/messages/delta"
                f"?$deltatoken={self.version}")

    def route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
              ) -> tuple[int, Any]:
        inbox = f"/v1.0/users/{self.address}/mailFolders/inbox/messages"
        if method == "GET" and path == f"{inbox}/delta":
            since = int(query.get("$deltatoken", "0"))
            with self.lock:
                values = [m for v, m in self.messages if v > since]
                return 200, {"value": values, "@odata.deltaLink": self._delta_link()}
        if method == "GET" and path == inbox:
            with self.lock:
                return 200, {"value": [m for _, m in reversed(self.messages)]}
        if method == "POST" and path == "/v1.0/subscriptions":
            return self._subscribe(body)
        if path.startswith("/v1.0/subscriptions/"):
            ident = path.rsplit("/", 1)[1]
            with self.lock:
                if ident not in self.subscriptions:
                    return 404, {"error": {"code": "ResourceNotFound",
                                           "message": "The object was not found."}}
                if method == "PATCH":
                    self.subscriptions[ident]["expirationDateTime"] = body["expirationDateTime"]
                    return 200, self._answer(ident)
                if method == "DELETE":
                    del self.subscriptions[ident]
                    return 204, None
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{method} {path}"}}

    def _subscribe(self, body: dict[str, Any]) -> tuple[int, Any]:
        """Graph's handshake: POST `?validationToken=` to each URL, expect the token back as
        text/plain within 10 s."""
        for url in dict.fromkeys([body["notificationUrl"], body["lifecycleNotificationUrl"]]):
            token = secrets.token_urlsafe(24)
            try:
                answer = httpx.post(url, params={"validationToken": token}, timeout=10)
            except httpx.HTTPError:
                answer = None
            if answer is None or answer.status_code != 200 or answer.text != token:
                return 400, {"error": {"code": "InvalidRequest", "message": "Subscription "
                                       "validation request failed. Notification endpoint must "
                                       "respond with 200 OK to validation request."}}
            self.validated.append(url)
        with self.lock:
            self.made += 1
            ident = f"sub-{self.made}"
            self.subscriptions[ident] = dict(body)
            return 201, self._answer(ident)

    def _answer(self, ident: str) -> dict[str, Any]:
        body = self.subscriptions[ident]
        return {"id": ident, "resource": body["resource"], "changeType": body["changeType"],
                "clientState": body["clientState"], "notificationUrl": body["notificationUrl"],
                "expirationDateTime": body["expirationDateTime"]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
