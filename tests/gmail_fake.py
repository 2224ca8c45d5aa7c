"""A local Gmail API for the sync-runner tests: users.getProfile, users.history.list,
users.messages.list/get (format=full), users.watch and users.stop for one mailbox, over plain
HTTP on loopback; optionally only some access tokens are valid (401 for the others)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from adapters.providers.mime import parse_message

GMAIL = "mia@acme.test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _rounds(raws: list[bytes]) -> Iterator[bytes]:
    """The corpus, then again and again with each round's Message-IDs made new (`.rN`), so a
    long ingest (a slow machine, a long test) never runs out of mail."""
    yield from raws
    for n in itertools.count(1):
        suffix = rb"\1\2.r%d>" % n
        for raw in raws:
            yield re.sub(rb"(?im)^(message-id:\s*<)([^>\r\n]*)>", suffix, raw, count=1)


class FakeGmail:
    """users.getProfile, users.history.list, users.messages.list/get (format=full), users.watch
    and users.stop for one mailbox, from corpus messages; `gone` answers 404 to everything
    (account deleted). `valid_tokens` (when set): other bearer tokens get 401 UNAUTHENTICATED.
    `watches` keeps every watch request's body; `tokens_seen` every bearer token used."""

    def __init__(self, raws: list[bytes]) -> None:
        self.corpus = _rounds(raws)
        self.messages: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []  # record i has history id BASE + i + 1
        self.base = 1000
        self.gone = False
        self.broken = False  # answer 500 to everything (an outage)
        self.delay = 0.0  # seconds per messages.get (to make a delivery take a while)
        self.lock = threading.Lock()
        self.count = 0
        self.valid_tokens: set[str] | None = None
        self.tokens_seen: list[str] = []
        self.watches: list[dict[str, Any]] = []
        self.stopped = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body_in = self.rfile.read(length) if length else b""
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                fake.tokens_seen.append(token)
                if fake.valid_tokens is not None and token not in fake.valid_tokens:
                    status, body = 401, {"error": {
                        "code": 401, "status": "UNAUTHENTICATED",
                        "message": "Request had invalid authentication credentials."}}
                elif self.command == "POST":
                    status, body = fake.post(unquote(split.path),
                                             json.loads(body_in) if body_in else {})
                else:
                    status, body = fake.route(unquote(split.path),
                                              {k: v[0] for k, v in parse_qs(split.query).items()})
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, n: int, minutes_ago: float = 5.0) -> list[str]:
        """n more corpus messages arrive now (internalDate `minutes_ago`)."""
        ids = []
        with self.lock:
            for _ in range(n):
                raw = next(self.corpus)
                self.count += 1
                mid = f"g{self.count:05d}"
                msg = parse_message(raw, mid)
                millis = int((datetime.now(UTC) - timedelta(minutes=minutes_ago)).timestamp()
                             * 1000)
                headers = [{"name": "From", "value": msg.from_},
                           {"name": "To", "value": GMAIL},
                           {"name": "Subject", "value": msg.subject}]
                if msg.message_id:
                    headers.append({"name": "Message-ID", "value": msg.message_id})
                if msg.in_reply_to:
                    headers.append({"name": "In-Reply-To", "value": msg.in_reply_to})
                self.messages[mid] = {
                    "id": mid, "threadId": f"t{mid}", "labelIds": ["INBOX", "UNREAD"],
                    "historyId": str(self.base + len(self.history) + 1),
                    "internalDate": str(millis), "sizeEstimate": len(raw),
                    "payload": {"partId": "", "mimeType": "text/plain", "filename": "",
                                "headers": headers,
                                "body": {"size": len(msg.body.encode()),
                                         "data": b64url(msg.body.encode())}}}
                self.history.append({"id": str(self.base + len(self.history) + 1),
                                     "messagesAdded": [{"message": {
                                         "id": mid, "threadId": f"t{mid}",
                                         "labelIds": ["INBOX", "UNREAD"]}}]})
                ids.append(mid)
        return ids

    @property
    def history_id(self) -> int:
        return self.base + len(self.history)

    def route(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        user = f"/gmail/v1/users/{GMAIL}"
        if self.broken:
            return 500, {"error": {"code": 500, "message": "backend error", "status": "INTERNAL"}}
        if self.gone or not path.startswith(user):
            return 404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                   "status": "NOT_FOUND"}}
        rest = path[len(user):]
        with self.lock:
            if rest == "/profile":
                return 200, {"emailAddress": GMAIL, "historyId": str(self.history_id)}
            if rest == "/history":
                start = int(query["startHistoryId"])
                size = int(query.get("maxResults", "100"))
                offset = int(query.get("pageToken", "0"))
                records = [h for h in self.history if int(h["id"]) > start][offset:]
                page: dict[str, Any] = {"history": records[:size],
                                        "historyId": str(self.history_id)}
                if len(records) > size:
                    page["nextPageToken"] = str(offset + size)
                return 200, page
            if rest == "/messages":
                after = int(query["q"].removeprefix("after:")) * 1000
                ids = sorted((m for m in self.messages.values()
                              if int(m["internalDate"]) > after),
                             key=lambda m: int(m["internalDate"]), reverse=True)
                return 200, {"messages": [{"id": m["id"], "threadId": m["threadId"]}
                                          for m in ids]}
            found = self.messages.get(rest.removeprefix("/messages/"))
        if found is None:
            return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
        time.sleep(self.delay)
        return 200, found

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """users.watch (expiration 7 days from now) and users.stop (204)."""
        user = f"/gmail/v1/users/{GMAIL}"
        if self.gone or not path.startswith(user):
            return 404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                   "status": "NOT_FOUND"}}
        with self.lock:
            if path == f"{user}/watch":
                self.watches.append(body)
                expiration = datetime.now(UTC) + timedelta(days=7)
                return 200, {"historyId": str(self.history_id),
                             "expiration": str(int(expiration.timestamp() * 1000))}
            if path == f"{user}/stop":
                self.stopped += 1
                return 204, None
        return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
