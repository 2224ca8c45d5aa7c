"""Generic readers of JSON from outside: webhook bodies, stored deliveries and provider API
responses. Each returns a typed value or raises `MalformedPayload(field, reason)` naming the
field as a dotted path (`value[2].resourceData.id`); the caller's boundary turns that into a
`MalformedWebhook` (a delivery) or a `MalformedResponse` (an API answer).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from adapters.errors import MalformedPayload

MAX_BODY_BYTES = 1 << 20  # a notification body; the HTTP layer may refuse larger ones earlier

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without space: safe in a header



def at(path: str, key: str | int) -> str:
    """`at("value", 2)` → `value[2]`; `at("message", "data")` → `message.data`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


MAX_INT_DIGITS = 64  # no id, count or time of ours is longer; int() refuses over 4,300 digits


class LongNumber:
    """A JSON integer of more than MAX_INT_DIGITS digits: kept out of int() (which raises on
    thousands of digits) so that the field reading it names itself in the 400."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits)

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"

    __str__ = __repr__


def _integer(digits: str) -> int | LongNumber:
    return int(digits) if len(digits.lstrip("-")) <= MAX_INT_DIGITS else LongNumber(digits)


def json_object(body: bytes | str | Mapping[str, Any], field: str = "body",
                max_bytes: int | None = MAX_BODY_BYTES) -> dict[str, Any]:
    """A JSON object from bytes/str (UTF-8, size-checked), or a mapping already decoded."""
    if isinstance(body, Mapping):
        return dict(body)
    raw = body.encode() if isinstance(body, str) else body
    if max_bytes is not None and len(raw) > max_bytes:
        raise MalformedPayload(field, f"larger than {max_bytes} bytes")
    if not raw.strip():
        raise MalformedPayload(field, "empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload(field, "not UTF-8") from None
    try:
        value = json.loads(text, parse_int=_integer)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedPayload(field, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedPayload(field, f"expected a JSON object, got {type(value).__name__}")
    return value


def req_obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise MalformedPayload(at(path, key), "missing" if value is None else "not an object")
    return value


def opt_obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedPayload(at(path, key), "not an object")
    return value


def opt_list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """A list, or [] when the key is absent or null."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(at(path, key), "not a list")
    return value


def req_str(obj: Mapping[str, Any], key: str, path: str, *, max_len: int | None = None,
            header_safe: bool = False) -> str:
    """A non-empty string; `header_safe`: printable ASCII without spaces (ids for headers)."""
    value = obj.get(key)
    if value is None:
        raise MalformedPayload(at(path, key), "missing")
    if not isinstance(value, str):
        raise MalformedPayload(at(path, key), "not a string")
    if not value:
        raise MalformedPayload(at(path, key), "empty")
    if max_len is not None and len(value) > max_len:
        raise MalformedPayload(at(path, key), f"longer than {max_len} characters")
    if header_safe and not _HEADER_SAFE.fullmatch(value):
        raise MalformedPayload(at(path, key), "not printable ASCII without spaces")
    return value


def opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(at(path, key), "not a string")
    return value


def uint64(value: Any, field: str) -> int:
    """Gmail's uint64 ids come as decimal strings (JSON numbers accepted too)."""
    if isinstance(value, bool) or value is None:
        raise MalformedPayload(field, "missing" if value is None else "not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise MalformedPayload(field, f"not a decimal number: {str(value)[:40]!r}")
    if not 0 <= number < 1 << 64:
        raise MalformedPayload(field, "out of the uint64 range")
    return number


def timestamp(value: Any, field: str) -> datetime:
    """ISO-8601 with an offset (`Z` too; Graph's 7 fractional digits are cut to 6)."""
    if not isinstance(value, str):
        raise MalformedPayload(field, "missing" if value is None else "not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedPayload(field, f"not an ISO-8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise MalformedPayload(field, "time without an offset")
    try:
        parsed.astimezone(UTC)  # year 1 at +01:00 or 9999 at -01:00 has no UTC time
    except OverflowError:
        raise MalformedPayload(field, "time out of range") from None
    return parsed


def boolean(value: Any, field: str) -> bool:
    """JSON true/false; Graph's delta example also sends the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MalformedPayload(field, f"not a boolean: {str(value)[:40]!r}")


def b64decode(value: Any, field: str) -> bytes:
    """base64url (Gmail's body.data) or standard base64 (Pub/Sub's data), padding optional."""
    if not isinstance(value, str):
        raise MalformedPayload(field, "missing" if value is None else "not a string")
    text = value.strip().rstrip("=")
    if len(text) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9+/_-]*", text):
        raise MalformedPayload(field, "not base64")
    try:
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPayload(field, "not base64") from None


def message_ids(header: str) -> list[str]:
    """The `<id>` tokens of a References / In-Reply-To header, angle brackets kept (as the
    domain compares Message-IDs); a header without brackets counts as one bare id."""
    found = re.findall(r"<[^<>\s]+>", header)
    if found:
        return found
    bare = header.strip()
    return [bare] if bare and " " not in bare else []
