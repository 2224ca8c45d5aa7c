"""Bearer tokens for the HTTP API: tenant, user, service flag and issued-at, HMAC-SHA256-signed.

A token is `crm1.<payload>.<signature>`, both parts base64url without padding; the payload is
compact JSON `{"t": tenant, "u": user, "s": service, "iat": unix seconds}` and the signature is
HMAC-SHA256(secret, "crm1.<payload>"). Verification compares signatures in constant time before
it looks at the payload, refuses tokens issued in the future (beyond a small clock skew) and,
when a maximum age is given, tokens older than that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

PREFIX = "crm1"
CLOCK_SKEW = 300  # seconds a token's issued-at may lie in the future
MIN_SECRET_BYTES = 16


class InvalidToken(Exception):
    """Missing, malformed, forged or expired token. The message is safe to log (no token)."""


@dataclass(frozen=True)
class Principal:
    tenant: str
    user: str
    service: bool
    issued_at: int


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
          issued_at: int | None = None) -> str:
    if not tenant or not user:
        raise ValueError("a token needs a tenant and a user")
    payload = {"t": tenant, "u": user, "s": service,
               "iat": int(time.time()) if issued_at is None else issued_at}
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
    tenant, user, service, iat = (payload.get(k) for k in ("t", "u", "s", "iat"))
    if not (isinstance(tenant, str) and tenant and isinstance(user, str) and user
            and isinstance(service, bool) and isinstance(iat, int)):
        raise InvalidToken("malformed token")
    clock = time.time() if now is None else now
    if iat > clock + CLOCK_SKEW:
        raise InvalidToken("token issued in the future")
    if max_age is not None and clock - iat > max_age:
        raise InvalidToken("token expired")
    return Principal(tenant, user, service, iat)
