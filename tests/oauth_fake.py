"""A local OAuth 2.0 token endpoint (the refresh-token grant of RFC 6749 §6, as Google's and
Microsoft's answer it) over plain HTTP on loopback, for the token-refresh tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class FakeTokenEndpoint:
    """`refresh_tokens`: the refresh tokens it accepts (others: 400 `invalid_grant`, echoing the
    token in the description, as careless endpoints do). Issues `ya29.fresh-N`; with `rotate`
    also a new refresh token `1//rotated-N` (Microsoft rotates). A wrong client id or secret is
    401 `invalid_client`. `requests` keeps every form it received."""

    def __init__(self, client_id: str = "crm-client", client_secret: str = "client-S3CRET",
                 refresh_tokens: set[str] | None = None, rotate: bool = False,
                 on_issue: Any = None) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_tokens = set(refresh_tokens or ())
        self.rotate = rotate
        self.on_issue = on_issue  # called with the new access token before answering
        self.requests: list[dict[str, str]] = []
        self.issued = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, body = fake.answer(self.path, form)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(form)
            if path != "/token" or form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            if (form.get("client_id"), form.get("client_secret")) != (self.client_id,
                                                                       self.client_secret):
                return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
            used = form.get("refresh_token", "")
            if used not in self.refresh_tokens:
                return 400, {"error": "invalid_grant",
                             "error_description": f"Token has been expired or revoked: {used}"}
            self.issued += 1
            token = f"ya29.fresh-{self.issued}"
            body: dict[str, Any] = {"access_token": token, "expires_in": 3599,
                                    "token_type": "Bearer", "scope": "mail"}
            if self.rotate:
                rotated = f"1//rotated-{self.issued}"
                self.refresh_tokens = {rotated}
                body["refresh_token"] = rotated
            if self.on_issue is not None:
                self.on_issue(token)
            return 200, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
