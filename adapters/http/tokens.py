"""Bearer tokens for the HTTP API: tenant, user, service flag, issued-at and expiry, HMAC-signed.

A token is `crm1.<payload>.<signature>`, both parts base64url without padding; the payload is
compact JSON `{"t": tenant, "u": user, "s": service, "iat": unix seconds, "exp": unix seconds}`
and the signature is HMAC-SHA256(secret, "crm1.<payload>"). Verification compares signatures in
constant time before it looks at the payload, refuses tokens issued in the future (beyond a small
clock skew), expired tokens, tokens without an expiry (issued before expiries existed: they would
live for ever) and, when a maximum age is given, tokens older than that.

Whether the user may still use a valid token (active, not revoked) is the tenant's state, checked
per request by the API (`refusal`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

from domain.state import TenantState

PREFIX = "crm1"
CLOCK_SKEW = 300  # seconds a token's issued-at may lie in the future
MIN_SECRET_BYTES = 16
USER_TTL = 12 * 3600  # a working day: a user token is re-issued daily
SERVICE_TTL = 30 * 24 * 3600  # services run unattended; rotate monthly (or revoke: new secret)


class InvalidToken(Exception):
    """Missing, malformed, forged or expired token. The message is safe to log (no token)."""


@dataclass(frozen=True)
class Principal:
    tenant: str
    user: str
    service: bool
    issued_at: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def check_secret(secret: str | None) -> bytes:
    """The secret as bytes; ValueError with a clear message when missing or too short."""
    if not secret:
        raise ValueError("CRMSYNC_SECRET is not set: export a random secret of at least "
                         f"{MIN_SECRET_BYTES} characters (e.g. `openssl rand -hex 32`)")
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"CRMSYNC_SECRET is too short: use at least {MIN_SECRET_BYTES} characters")
    return raw


def issue(secret: bytes, tenant: str, user: str, service: bool = False,
          issued_at: int | None = None, ttl: int | None = None) -> str:
    """A token valid for `ttl` seconds from `issued_at` (now); default USER_TTL or SERVICE_TTL."""
    if not tenant or not user:
        raise ValueError("a token needs a tenant and a user")
    if ttl is None:
        ttl = SERVICE_TTL if service else USER_TTL
    if ttl <= 0:
        raise ValueError("a token's ttl must be a positive number of seconds")
    iat = int(time.time()) if issued_at is None else issued_at
    payload = {"t": tenant, "u": user, "s": service, "iat": iat, "exp": iat + ttl}
    body = _b64(orjson.dumps(payload))
    signed = f"{PREFIX}.{body}"
    return f"{signed}.{_b64(_sign(secret, signed))}"


def verify(secret: bytes, token: str, *, max_age: int | None = None,
           now: float | None = None) -> Principal:
    """The principal of a valid token; InvalidToken otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidToken("malformed token")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        given = parts[2].encode("ascii")
        expected = _b64(_sign(secret, signed)).encode("ascii")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidToken("malformed token") from None
    # compare the canonical text, not decoded bytes: base64 ignores the low bits of the last
    # character, so several texts decode to the same signature
    if not hmac.compare_digest(given, expected):
        raise InvalidToken("bad signature")
    try:
        payload = orjson.loads(_unb64(parts[1]))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidToken("malformed token") from None
    if not isinstance(payload, dict):
        raise InvalidToken("malformed token")
    tenant, user, service, iat, exp = (payload.get(k) for k in ("t", "u", "s", "iat", "exp"))
    if not (isinstance(tenant, str) and tenant and isinstance(user, str) and user
            and isinstance(service, bool) and isinstance(iat, int)
            and not isinstance(iat, bool) and (exp is None or (
                isinstance(exp, int) and not isinstance(exp, bool)))):
        raise InvalidToken("malformed token")
    if exp is None:
        raise InvalidToken("token without expiry: issue a new one (crmsync token)")
    clock = time.time() if now is None else now
    if iat > clock + CLOCK_SKEW:
        raise InvalidToken("token issued in the future")
    if clock >= exp or (max_age is not None and clock - iat > max_age):
        raise InvalidToken("token expired")
    return Principal(tenant, user, service, iat, exp)


def refusal(state: TenantState, user: str, issued_at: int | None) -> str | None:
    """Why the tenant's state refuses a valid token of `user` at once (§8, E4), or None: the user
    is unknown, deactivated or deleted, or the token was issued at or before the user's latest
    RevokeTokens (`issued_at` None: not a token, only the user's status). A token issued in the
    same second as the revocation is refused too: issued-at has a resolution of one second."""
    found = state.users.get(user)
    if found is None:
        return status_refusal(False, None, issued_at)
    revoked = found.tokens_revoked_at
    return status_refusal(found.active, None if revoked is None else revoked.timestamp(),
                          issued_at)


def status_refusal(active: bool, revoked_at: float | None, issued_at: int | None) -> str | None:
    """`refusal` from what it reads of the user: active, and tokens revoked at (unix s)."""
    if not active:
        return "not an active user of this tenant"
    if issued_at is not None and revoked_at is not None and issued_at <= revoked_at:
        return "token revoked"
    return None
