"""The HTTP core of the provider clients (Gmail, Microsoft Graph) over httpx.

- Every request carries `Authorization: Bearer <token>`, the token asked of the caller's
  callable each time (so a refreshed one is used at once). The token never appears in an
  exception, a log line, or an error text the provider echoes (replaced by `[token]`).
- Only URLs under the configured base URL are requested (Graph's links included) and redirects
  are not followed: the token goes nowhere else.
- 429 and 503 are retried at most `max_retries` times, waiting what `Retry-After` asks (seconds
  or an HTTP date; without it `backoff * 2**attempt`); a wait longer than `max_retry_wait`, or
  the retries exhausted, is `ProviderThrottled(retry_after)`. Network failures and timeouts are
  `ProviderError` at once (the worker retries the round).
- 401: when the caller gave a `refresh` callable, it is asked once per request to renew the
  access token (it raises `CredentialsRejected` when it cannot), and the request is sent once
  more with the new token. A 401 that stands is `CredentialsRejected` (see `failure`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from adapters.deliveries.webhooks import json_object
from adapters.errors import CredentialsRejected, MalformedWebhook, ProviderError, ProviderThrottled

RETRY_STATUSES = frozenset({429, 503})
MAX_RESPONSE_BYTES = 64 << 20

log = structlog.get_logger("crmsync.provider")


@dataclass(frozen=True)
class ErrorInfo:
    """A provider's error body: Graph `{"error": {"code", "message"}}`, Google
    `{"error": {"code": 404, "status": "NOT_FOUND", "message", "errors": [{"reason"}]}}`.
    `codes` holds every string code found (Graph code, Google status and reasons)."""

    codes: frozenset[str]
    message: str


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (delta-seconds, fractions tolerated, or an HTTP date)."""
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_info(response: httpx.Response) -> ErrorInfo:
    try:
        body = response.json()
    except ValueError:
        return ErrorInfo(frozenset(), "")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ErrorInfo(frozenset(), "")
    codes = {v for v in (error.get("code"), error.get("status")) if isinstance(v, str)}
    for detail in error.get("errors") or []:
        if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
            codes.add(detail["reason"])
    inner = error.get("innerError") or error.get("innererror")
    if isinstance(inner, dict) and isinstance(inner.get("code"), str):
        codes.add(inner["code"])
    message = error.get("message")
    return ErrorInfo(frozenset(codes), message if isinstance(message, str) else "")


class ProviderHttp:
    def __init__(self, provider: str, base_url: str, access_token: Callable[[], str], *,
                 timeout: float = 30.0, max_retries: int = 3, max_retry_wait: float = 60.0,
                 backoff: float = 1.0, verify: SSLContext | bool = True,
                 refresh: Callable[[], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        """`transport`: httpx's default (the network) unless given, e.g. `httpx.MockTransport`
        in unit tests."""
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"{provider}: base URL must be http(s): {base_url!r}")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._refresh = refresh
        self._used_tokens: set[str] = set()
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self._client = httpx.Client(timeout=timeout, verify=verify, follow_redirects=False,
                                    transport=transport)

    def close(self) -> None:
        self._client.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def owns(self, url: str) -> bool:
        return url.startswith(self.base_url + "/")

    def error(self, reason: str, status: int | None = None) -> ProviderError:
        return ProviderError(self.provider, self.scrub(reason), status)

    def scrub(self, text: str) -> str:
        for token in self._used_tokens:
            if token:
                text = text.replace(token, "[token]")
        return text

    def get(self, url: str, params: Mapping[str, str | int] | None = None,
            headers: Iterable[tuple[str, str]] = ()) -> httpx.Response:
        """The response once it is not 429/503 (any other status: the caller reads it)."""
        return self.request("GET", url, params, headers)

    def request(self, method: str, url: str, params: Mapping[str, str | int] | None = None,
                headers: Iterable[tuple[str, str]] = (), *, json: Any = None,
                content: bytes | None = None) -> httpx.Response:
        """Any method (the outbox writes with POST, PATCH and DELETE), retried like `get`: a 429
        or 503 means the provider did not act on the request."""
        headers = list(headers)
        if not self.owns(url):
            raise self.error("refusing a URL outside the configured API base URL")
        path = urlsplit(url).path
        wait = self.backoff
        status = 0
        refreshed = self._refresh is None
        attempt = 0
        while True:
            token = self._token()
            self._used_tokens.add(token)
            failure: str | None = None
            try:
                response = self._client.request(
                    method, url, params=params, json=json, content=content,
                    headers=[*headers, ("Accept", "application/json"),
                             ("Authorization", f"Bearer {token}")])
            except httpx.HTTPError as exc:  # raised below, outside this block: no __context__
                failure = type(exc).__name__
            if failure is not None:
                raise self.error(f"{method} {path}: {failure}")
            status = response.status_code
            if status == 401 and not refreshed and self._refresh is not None:
                # The access token was refused: renew it once and send the request again (a
                # refresh that cannot be done raises CredentialsRejected from the callable).
                refreshed = True
                response.close()
                log.info("provider_token_refresh", provider=self.provider, path=path)
                self._refresh()
                continue
            if status not in RETRY_STATUSES:
                return response
            wait = retry_after(response.headers.get("Retry-After"), self.backoff * 2 ** attempt)
            if attempt == self.max_retries or wait > self.max_retry_wait:
                break
            log.info("provider_retry", provider=self.provider, path=path, status=status,
                     wait=wait, attempt=attempt + 1)
            time.sleep(wait)
            attempt += 1
        raise ProviderThrottled(self.provider, f"{method} {path}: {status} after {attempt + 1} "
                                f"attempt(s), retry after {wait:g}s", wait, status)

    def failure(self, response: httpx.Response, what: str) -> ProviderError:
        """The error for an unexpected answer; a 401 (the token refused, after any refresh) is
        `CredentialsRejected`: the mailbox needs new credentials."""
        info = error_info(response)
        code = ",".join(sorted(info.codes))
        reason = self.scrub(f"{what}: {response.status_code} {code}: {info.message[:300]}"
                            .rstrip(": "))
        if response.status_code == 401:
            return CredentialsRejected(
                self.provider, f"{reason} (the access token was refused: reconnect the mailbox)",
                401)
        return ProviderError(self.provider, reason, response.status_code)

    def json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            return json_object(response.content, max_bytes=MAX_RESPONSE_BYTES)
        except MalformedWebhook as exc:
            raise self.error(f"{what}: unreadable response: {exc}", response.status_code) from None
