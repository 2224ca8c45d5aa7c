"""A local Microsoft Graph mail API for the sync-runner tests, over TLS on loopback (the delta
parser takes only https links): one mailbox's folders (`mailFolders`, `childFolders`, the
well-known names), each folder's `messages/delta` with a deltaLink and its backfill listing,
messages by id with their attachments (metadata; contentBytes only when `$select`ed), and
change-notification subscriptions (`POST /subscriptions` performs the
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


WELL_KNOWN = {"inbox": "Inbox", "sentitems": "Sent Items", "deleteditems": "Deleted Items",
              "junkemail": "Junk Email", "drafts": "Drafts", "outbox": "Outbox"}


class FakeGraph:
    """The mailbox of `address`: its folders (the well-known ones, plus `add_folder`), messages
    with immutable ids (`move` keeps the id) and subscriptions. Every change gets the next
    version; a deltaLink carries the version it was made at, and a folder's delta lists what
    came into it since (and `@removed` what left it). `subscriptions`: id -> the POSTed body
    (its `expirationDateTime` updated by PATCH); `validated`: the notification URLs whose
    handshake succeeded; `requests`: (method, path) of every request; `queries`: (path, query)
    of every GET."""

    def __init__(self, address: str, cert: Path, key: str | Path) -> None:
        self.address = address
        self.folders: dict[str, dict[str, Any]] = {
            f"F-{wk}": {"id": f"F-{wk}", "displayName": name, "parent": None, "wk": wk}
            for wk, name in WELL_KNOWN.items()}
        self.messages: dict[str, tuple[int, str, dict[str, Any]]] = {}  # id -> version, folder
        self.attachments: dict[str, list[dict[str, Any]]] = {}
        self.removed: list[tuple[int, str, str]] = []  # (version, folder, message id)
        self.version = 0
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.validated: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.queries: list[tuple[str, dict[str, str]]] = []
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
                if self.command == "GET":
                    fake.queries.append((unquote(split.path), query))
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

    # -- the mailbox -------------------------------------------------------------------------------
    def add_folder(self, name: str, parent: str | None = None) -> str:
        with self.lock:
            ident = f"F-{len(self.folders) + 1}-{name.replace(' ', '')}"
            self.folders[ident] = {"id": ident, "displayName": name, "parent": parent,
                                   "wk": None}
            return ident

    def add(self, n: int, minutes_ago: float = 5.0, *, folder: str = "F-inbox",
            attachments: list[dict[str, Any]] | None = None, **fields: Any) -> list[str]:
        ids = []
        with self.lock:
            for _ in range(n):
                self.version += 1
                mid = f"AAMk-{self.version:04d}="
                when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                resource = {
                    "id": mid, "conversationId": f"conv-{self.version}",
                    "internetMessageId": f"<g{self.version}@ext.test>",
                    "from": {"emailAddress": {"address": f"sender{self.version}@ext.test"}},
                    "toRecipients": [{"emailAddress": {"address": self.address}}],
                    "subject": f"hello {self.version}", "body": {"contentType": "text",
                                                                 "content": "hi"},
                    "sentDateTime": when, "receivedDateTime": when, "isRead": False,
                    "categories": [], "hasAttachments": bool(attachments), **fields}
                self.messages[mid] = (self.version, folder, resource)
                if attachments:
                    self.attachments[mid] = [{"@odata.type": "#microsoft.graph.fileAttachment",
                                              "contentBytes": "QUJD", "isInline": False, **a}
                                             for a in attachments]
                ids.append(mid)
        return ids

    def move(self, mid: str, folder: str) -> None:
        with self.lock:
            _, old, resource = self.messages[mid]
            self.version += 1
            self.removed.append((self.version, old, mid))
            self.messages[mid] = (self.version, folder, resource)

    def delete(self, mid: str) -> None:
        with self.lock:
            _, old, _ = self.messages.pop(mid)
            self.version += 1
            self.removed.append((self.version, old, mid))

    def _folder(self, name: str) -> str | None:
        if name in self.folders:
            return name
        return next((i for i, f in self.folders.items() if f["wk"] == name.lower()), None)

    def _resource(self, mid: str) -> dict[str, Any]:
        _, folder, resource = self.messages[mid]
        return {**resource, "parentFolderId": folder}

    def _delta(self, folder: str, since: int | None) -> dict[str, Any]:
        values: list[dict[str, Any]] = [
            self._resource(m) for m, (v, f, _) in self.messages.items()
            if f == folder and (since is None or v > since)]
        if since is not None:
            values += [{"id": m, "@removed": {"reason": "deleted"}}
                       for v, f, m in self.removed if f == folder and v > since
                       and self.messages.get(m, (0, None))[1] != folder]
        user = quote(self.address, safe="@")
        return {"value": values, "@odata.deltaLink":
                f"{self.url}/users/{user}/mailFolders/{folder}/messages/delta"
                f"?$deltatoken={self.version}"}

    def route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
              ) -> tuple[int, Any]:
        user = f"/v1.0/users/{self.address}"
        parts = path[len(user) + 1:].split("/") if path.startswith(user + "/") else []
        with self.lock:
            if method == "GET" and parts[:1] == ["mailFolders"]:
                return self._folders_route(parts[1:], query)
            if method == "GET" and parts[:1] == ["messages"] and len(parts) >= 2:
                if parts[1] not in self.messages:
                    return 404, {"error": {"code": "ErrorItemNotFound", "message": "gone"}}
                if parts[2:] == ["attachments"]:
                    return 200, {"value": [
                        {k: v for k, v in a.items() if k != "contentBytes"
                         or "contentBytes" in query.get("$select", "contentBytes")}
                        for a in self.attachments.get(parts[1], [])]}
                if len(parts) == 2:
                    return 200, self._resource(parts[1])
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

    def _folders_route(self, parts: list[str], query: dict[str, str]) -> tuple[int, Any]:
        def listed(parent: str | None) -> dict[str, Any]:
            return {"value": [{"id": i, "displayName": f["displayName"], "childFolderCount":
                               sum(1 for g in self.folders.values() if g["parent"] == i)}
                              for i, f in self.folders.items() if f["parent"] == parent]}

        if not parts:
            return 200, listed(None)
        folder = self._folder(parts[0])
        if folder is None:
            return 404, {"error": {"code": "ErrorItemNotFound", "message": "no such folder"}}
        rest = parts[1:]
        if not rest:
            return 200, {"id": folder, "displayName": self.folders[folder]["displayName"]}
        if rest == ["childFolders"]:
            return 200, listed(folder)
        if rest == ["messages", "delta"]:
            token = query.get("$deltatoken")
            return 200, self._delta(folder, None if token is None else int(token))
        if rest == ["messages"]:
            floor = query.get("$filter", "").rsplit(" ", 1)[-1]
            found = sorted((r for _, f, r in self.messages.values() if f == folder
                            and (not floor or r["receivedDateTime"] >= floor)),
                           key=lambda r: r["receivedDateTime"], reverse=True)
            return 200, {"value": [{**r, "parentFolderId": folder} for r in found]}
        return 404, {"error": {"code": "ResourceNotFound", "message": "/".join(parts)}}

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
