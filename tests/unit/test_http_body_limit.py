"""POST /v1/commands refuses an oversized body while it streams (issue #10, point 7).

The app is called as ASGI with a `receive` that hands out the body in chunks and counts what the
app took: a chunked body over the limit is refused with 413 after about the limit, a declared
Content-Length over it before a byte is read, and a body within it is applied.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from adapters.http.api import create_app
from adapters.http.limits import MAX_BODY
from adapters.http.tokens import issue
from runners.services.engine import Engine

SECRET = b"test-secret-0123456789abcdef"
CHUNK = 64 * 1024


def post(body_chunks: int, line: bytes, extra_headers: list[tuple[bytes, bytes]]
         ) -> tuple[int, dict[str, Any], int]:
    """POST /v1/commands with `body_chunks` chunks of CHUNK bytes (lines of `line`); returns the
    status, the JSON answer and the number of body bytes the app received."""
    engine = Engine.open_in_memory()
    app = create_app(engine, SECRET)
    auth = f"Bearer {issue(SECRET, 'acme', 'svc', True)}".encode()
    chunk = (line * (CHUNK // len(line) + 1))[:CHUNK]
    taken = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if taken >= body_chunks * CHUNK:
            await asyncio.Event().wait()  # the client has nothing more (never reached)
        taken += CHUNK
        return {"type": "http.request", "body": chunk, "more_body": taken < body_chunks * CHUNK}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/commands", "raw_path":
             b"/v1/commands", "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [
                 (b"authorization", auth), (b"content-type", b"application/x-ndjson"),
                 *extra_headers]}
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        engine.close()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), taken


def test_a_chunked_body_over_the_limit_is_refused_after_about_the_limit() -> None:
    chunks = 4 * MAX_BODY // CHUNK  # 40 MiB offered
    status, answer, taken = post(chunks, b"x" * 99 + b"\n",
                                 [(b"transfer-encoding", b"chunked")])
    assert status == 413, answer
    assert MAX_BODY < taken <= MAX_BODY + CHUNK  # the rest of the 40 MiB was never read


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    status, answer, taken = post(4 * MAX_BODY // CHUNK, b"x" * 99 + b"\n",
                                 [(b"content-length", str(4 * MAX_BODY).encode())])
    assert status == 413, answer
    assert taken == 0


def test_a_streamed_body_within_the_limit_is_applied() -> None:
    line = json.dumps({"cmd": "AddUser", "tenant": "acme", "user": "ada",
                       "email": "ada@acme.test", "role": "admin"}).encode() + b"\n"
    status, answer, taken = post(1, line, [(b"transfer-encoding", b"chunked")])
    # one 64 KiB chunk of the same command: the first applies, the rest are unchanged, and the
    # chunk's cut-off last line is rejected
    assert status == 200, answer
    assert taken == CHUNK
    assert answer["applied"] == 1
    assert answer["applied"] + answer["unchanged"] + answer["rejected"] == \
        len((line * (CHUNK // len(line) + 1))[:CHUNK].splitlines())
