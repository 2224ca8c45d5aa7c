"""Stateful local stand-ins for the Gmail and Graph write APIs (the outbound contract tests and
the outbox e2e test): they keep the messages sent, trashed and flagged, like the providers."""

from __future__ import annotations

import base64
import email
import itertools
import json
import re
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "ya29.outbound-secret-token"
MAILBOX = "mia@acme.test"
ids = itertools.count(1)

Reply = tuple[int, dict[str, str], Any]


# --- a stateful HTTP test server ----------------------------------------------------------------


class HttpProvider:
    """Serves every method with `self.handle(method, path, query, headers, body)`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.failures: list[Reply] = []  # answered first, one per request
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                headers = dict(self.headers.items())
                provider.seen.append((self.command, unquote(split.path), headers))
                if provider.failures:
                    status, extra, payload = provider.failures.pop(0)
                else:
                    status, extra, payload = provider.handle(
                        self.command, unquote(split.path), query, headers, body)
                raw = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def do_PATCH(self) -> None:
                self._any()

            def do_DELETE(self) -> None:
                self._any()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes) -> Reply:
        return 404, {}, {"error": {"code": "NotFound", "message": "no route"}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Stored:
    raw: bytes
    message_id: str
    thread: str
    read: bool = False
    trashed: bool = False
    draft: bool = False


def _message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw).get("Message-ID", "")).strip()


class GmailServer(HttpProvider):
    """users.messages send/list/trash/modify and users.getProfile, after the v1 discovery
    document; one mailbox (MAILBOX), any other user is unknown (404)."""

    def __init__(self) -> None:
        self.messages: dict[str, Stored] = {}
        # set `hold` to keep the answer to a send back (the message is stored at once): a client
        # killed meanwhile never learns that the provider accepted it
        self.hold: threading.Event | None = None
        self.send_arrived = threading.Event()
        super().__init__()

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes) -> Reply:
        assert headers.get("Authorization") == f"Bearer {TOKEN}"
        prefix = f"/gmail/v1/users/{MAILBOX}/"
        if not path.startswith(prefix):
            return 404, {}, {"error": {"code": 404, "status": "NOT_FOUND", "message": "no user"}}
        rest = path[len(prefix):].split("/")
        if rest == ["profile"]:
            return 200, {}, {"emailAddress": MAILBOX, "historyId": "1"}
        if method == "POST" and rest == ["messages", "send"]:
            data = json.loads(body)
            raw = base64.urlsafe_b64decode(data["raw"] + "=" * (-len(data["raw"]) % 4))
            pid = f"{next(ids):016x}"
            thread = data.get("threadId") or pid
            self.messages[pid] = Stored(raw, _message_id(raw), thread, read=True)
            self.send_arrived.set()
            if self.hold is not None:
                self.hold.wait(30)
            return 200, {}, {"id": pid, "threadId": thread, "labelIds": ["SENT"]}
        if method == "GET" and rest == ["messages"]:
            wanted = query.get("q", "").removeprefix("rfc822msgid:")
            found = [{"id": pid, "threadId": m.thread} for pid, m in self.messages.items()
                     if m.message_id.strip("<>") == wanted]
            return 200, {}, ({"messages": found, "resultSizeEstimate": len(found)} if found
                             else {"resultSizeEstimate": 0})
        if method == "POST" and len(rest) == 3 and rest[0] == "messages":
            stored = self.messages.get(rest[1])
            if stored is None:
                return 404, {}, {"error": {"code": 404, "status": "NOT_FOUND",
                                           "message": "Requested entity was not found."}}
            if rest[2] == "trash":
                stored.trashed = True
            elif rest[2] == "modify":
                change = json.loads(body)
                if "UNREAD" in change.get("removeLabelIds", []):
                    stored.read = True
                if "UNREAD" in change.get("addLabelIds", []):
                    stored.read = False
            return 200, {}, {"id": rest[1], "threadId": stored.thread}
        return super().handle(method, path, query, headers, body)


class GraphServer(HttpProvider):
    """Draft creation from MIME, draft send, `$filter=internetMessageId eq`, DELETE and PATCH of
    a message, and the inbox folder (the mailbox probe)."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.messages: dict[str, Stored] = {}
        super().__init__(tls)

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
               body: bytes) -> Reply:
        assert headers.get("Authorization") == f"Bearer {TOKEN}"
        prefix = f"/v1.0/users/{MAILBOX}/"
        missing_item = (404, {}, {"error": {"code": "ErrorItemNotFound", "message": "gone"}})
        if not path.startswith(prefix):
            return 404, {}, {"error": {"code": "ErrorInvalidUser", "message": "no mailbox"}}
        rest = path[len(prefix):].split("/")
        if rest == ["mailFolders", "inbox"]:
            return 200, {}, {"id": "inbox"}
        if method == "POST" and rest == ["messages"]:
            assert headers.get("Content-Type") == "text/plain"
            raw = base64.b64decode(body)
            pid = f"AAMk{next(ids):08d}="
            self.messages[pid] = Stored(raw, _message_id(raw), f"conv-{pid}", read=True,
                                        draft=True)
            return 201, {}, {"id": pid, "conversationId": f"conv-{pid}", "isDraft": True}
        if method == "GET" and rest == ["messages"]:
            match = re.fullmatch(r"internetMessageId eq '(.*)'", query.get("$filter", ""))
            assert match is not None
            wanted = match.group(1).replace("''", "'")
            value = [{"id": pid, "conversationId": m.thread, "isDraft": m.draft}
                     for pid, m in self.messages.items()
                     if m.message_id == wanted and not m.trashed]
            return 200, {}, {"value": value}
        if len(rest) >= 2 and rest[0] == "messages":
            stored = self.messages.get(rest[1])
            if stored is None or stored.trashed:
                return missing_item
            if method == "POST" and rest[2:] == ["send"]:
                stored.draft = False
                return 202, {}, None
            if method == "DELETE" and len(rest) == 2:
                stored.trashed = True
                return 204, {}, None
            if method == "PATCH" and len(rest) == 2:
                stored.read = bool(json.loads(body)["isRead"])
                return 200, {}, {"id": rest[1], "isRead": stored.read}
        return super().handle(method, path, query, headers, body)
