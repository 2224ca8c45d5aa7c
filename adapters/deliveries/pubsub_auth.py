"""Gmail push authentication: the Cloud Pub/Sub push OIDC token (SPEC §8, issue #10).

A push subscription with authentication sends `Authorization: Bearer <JWT>`, an ID token signed
by Google for the subscription's service account. `PushVerifier.check(authorization)` verifies it
with google-auth (`google.auth.jwt.decode`: RS256 signature against Google's certificates, `iat`
and `exp` with a small clock skew), then the issuer (accounts.google.com), the audience and,
when configured, the service account (`email` with `email_verified`). It raises `PushRefused`:
401 when the token is missing or invalid (signature, expiry, issuer, shape), 403 when it is
valid but for another audience or account, 503 when Google's certificates cannot be had (the
push is retried). A refused push stores nothing: the route checks before it reads the body.

We do not call `google.oauth2.id_token.verify_token`: it fetches the certificates on every call
through a blocking transport. `GoogleCerts` fetches them asynchronously (httpx) and keeps them
until the response's `Cache-Control: max-age` runs out (clamped to [60 s, 1 day]; 1 hour
without one); a token naming an unknown key id refetches at most once per `refetch_after`
seconds (Google rotates keys), so forged key ids cannot make us hammer the endpoint.

`RouteDisabled` answers every push 503: production mode without an audience (see
`runners/entrypoints/serve.py`, `gmail_push_auth`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import structlog
from google.auth import exceptions as google_exceptions
from google.auth import jwt

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"  # {kid: PEM certificate}
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
MAX_TOKEN_CHARS = 8192  # Google's ID tokens are ~1 KB
DEFAULT_CERTS_TTL, MIN_CERTS_TTL, MAX_CERTS_TTL = 3600.0, 60.0, 86400.0
log = structlog.get_logger("crmsync.pubsub_auth")

# What a malformed or forged token can make google-auth's decoder raise.
_DECODE_ERRORS = (google_exceptions.GoogleAuthError, ValueError, TypeError, KeyError,
                  AttributeError, OverflowError)


class PushRefused(Exception):
    """The push is not accepted: `status` 401, 403 or 503, `reason` for the log (no token)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class CertsUnavailable(Exception):
    pass


class GmailPushAuth(Protocol):
    """What the Gmail route asks before it stores anything."""

    async def check(self, authorization: str | None) -> None:
        """Returns when the push may be stored; raises PushRefused otherwise."""
        ...

    async def close(self) -> None: ...


def max_age(cache_control: str | None) -> float:
    """Seconds to keep a certificate response, from its Cache-Control header."""
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isascii() and value.isdigit() and len(value) < 10:
            return min(MAX_CERTS_TTL, max(MIN_CERTS_TTL, float(value)))
    return DEFAULT_CERTS_TTL


class GoogleCerts:
    """Google's signing certificates by key id, cached (see the module docstring)."""

    def __init__(self, url: str = GOOGLE_CERTS_URL, *, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 refetch_after: float = 30.0) -> None:
        self.url, self.timeout, self.transport, self.clock = url, timeout, transport, clock
        self.refetch_after = refetch_after
        self.fetches = 0  # how many times the endpoint was asked (figures, tests)
        self._certs: dict[str, str] = {}
        self._expires = float("-inf")
        self._fetched = float("-inf")
        self._lock: asyncio.Lock | None = None

    async def for_key(self, kid: str | None) -> Mapping[str, str]:
        """The certificates, fresh; refetched early once when `kid` is not among them."""
        now = self.clock()
        stale = now >= self._expires
        unknown = kid is not None and kid not in self._certs
        if stale or (unknown and now - self._fetched >= self.refetch_after):
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:  # one fetch for a burst of pushes
                now = self.clock()
                if now >= self._expires or (kid is not None and kid not in self._certs
                                            and now - self._fetched >= self.refetch_after):
                    await self._fetch()
        return self._certs

    async def _fetch(self) -> None:
        self._fetched = self.clock()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(transport=self.transport,
                                         timeout=self.timeout) as client:
                answer = await client.get(self.url)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            if self._certs and self._fetched < self._expires:
                return  # an early refetch failed: keep the fresh ones
            raise CertsUnavailable(f"cannot fetch certificates from {self.url}: {exc}") from exc
        if not isinstance(body, dict) or not body or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in body.items()):
            raise CertsUnavailable(f"certificates at {self.url} are not a {{kid: PEM}} object")
        self._certs = dict(body)
        self._expires = self._fetched + max_age(answer.headers.get("cache-control"))
        log.info("google_certs_fetched", url=self.url, keys=len(body))


@dataclass
class PushVerifier:
    """Checks the Pub/Sub push bearer token (see the module docstring)."""

    audience: str
    certs: GoogleCerts
    service_account: str | None = None
    clock_skew: int = 10

    async def check(self, authorization: str | None) -> None:
        token = _bearer(authorization)
        try:
            kid = jwt.decode_header(token).get("kid")  # type: ignore[no-untyped-call]
        except _DECODE_ERRORS as exc:
            raise PushRefused(401, f"malformed token: {_brief(exc)}") from None
        if kid is not None and not isinstance(kid, str):
            raise PushRefused(401, "malformed token: kid is not a string")
        try:
            certs = await self.certs.for_key(kid)
        except CertsUnavailable as exc:
            raise PushRefused(503, str(exc)) from None
        try:
            # audience checked below, to tell a wrong audience (403) from a bad token (401)
            claims: Any = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=None, clock_skew_in_seconds=self.clock_skew)
        except _DECODE_ERRORS as exc:
            raise PushRefused(401, f"invalid token: {_brief(exc)}") from None
        if not isinstance(claims, dict) or claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushRefused(401, "invalid token: not issued by Google")
        if claims.get("aud") != self.audience:
            raise PushRefused(403, "token for another audience")
        if self.service_account is not None and (
                claims.get("email") != self.service_account
                or claims.get("email_verified") is not True):
            raise PushRefused(403, "token of another service account")

    async def close(self) -> None:
        return None


class RouteDisabled:
    """Refuses every push (503): the route is not configured to authenticate."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def check(self, authorization: str | None) -> None:
        raise PushRefused(503, self.reason)

    async def close(self) -> None:
        return None


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise PushRefused(401, "no Authorization header")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise PushRefused(401, "Authorization is not a bearer token")
    if len(token) > MAX_TOKEN_CHARS:
        raise PushRefused(401, f"bearer token longer than {MAX_TOKEN_CHARS} characters")
    return token


def _brief(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]
