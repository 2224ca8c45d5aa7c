"""Webhook deliveries: raw request bodies (bytes) and query parameters in, typed values out.

Pure parsing, no I/O: the HTTP endpoints and the NATS publisher (issue #4) sit on top.

- `parse_gmail_push(body)` reads a Cloud Pub/Sub push envelope carrying a Gmail notification
  (`message.data` = base64 JSON `{emailAddress, historyId}`).
- `parse_graph(body, query, expected_client_state)` reads a Microsoft Graph delivery: the
  subscription validation handshake (`?validationToken=`), or a notification collection
  (`value[]`) of change and lifecycle notifications, each with its clientState checked.

Anything unreadable raises `MalformedWebhook(field, reason)` naming the field as a dotted path.
A clientState that does not match is not malformed input: that notification is returned with
`rejection` set and the others of the batch are unaffected.

Every delivery carries a `delivery_id` fit for the `Nats-Msg-Id` header (printable ASCII, no
spaces): `gmail:<Pub/Sub messageId>` and `graph:<sha256 hex>` (see `graph_delivery_id`).

The helpers below (`json_object`, `req_str`, …) are shared with `gmail_payloads` and
`graph_payloads`, which read the providers' API responses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from adapters.errors import MalformedWebhook

MAX_BODY_BYTES = 1 << 20  # a notification body; the HTTP layer may refuse larger ones earlier
MAX_VALIDATION_TOKEN = 1024  # Graph's tokens are ~100 characters; we echo it, so keep it small
MAX_ID_CHARS = 256  # ids that end up in a Nats-Msg-Id or a subject

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without space: safe in a header

# --- helpers shared by the payload modules ---------------------------------------------------


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
        raise MalformedWebhook(field, f"larger than {max_bytes} bytes")
    if not raw.strip():
        raise MalformedWebhook(field, "empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedWebhook(field, "not UTF-8") from None
    try:
        value = json.loads(text, parse_int=_integer)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedWebhook(field, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedWebhook(field, f"expected a JSON object, got {type(value).__name__}")
    return value


def req_obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise MalformedWebhook(at(path, key), "missing" if value is None else "not an object")
    return value


def opt_obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedWebhook(at(path, key), "not an object")
    return value


def opt_list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """A list, or [] when the key is absent or null."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedWebhook(at(path, key), "not a list")
    return value


def req_str(obj: Mapping[str, Any], key: str, path: str, *, max_len: int | None = None,
            header_safe: bool = False) -> str:
    """A non-empty string; `header_safe`: printable ASCII without spaces (ids for headers)."""
    value = obj.get(key)
    if value is None:
        raise MalformedWebhook(at(path, key), "missing")
    if not isinstance(value, str):
        raise MalformedWebhook(at(path, key), "not a string")
    if not value:
        raise MalformedWebhook(at(path, key), "empty")
    if max_len is not None and len(value) > max_len:
        raise MalformedWebhook(at(path, key), f"longer than {max_len} characters")
    if header_safe and not _HEADER_SAFE.fullmatch(value):
        raise MalformedWebhook(at(path, key), "not printable ASCII without spaces")
    return value


def opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedWebhook(at(path, key), "not a string")
    return value


def uint64(value: Any, field: str) -> int:
    """Gmail's uint64 ids come as decimal strings (JSON numbers accepted too)."""
    if isinstance(value, bool) or value is None:
        raise MalformedWebhook(field, "missing" if value is None else "not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise MalformedWebhook(field, f"not a decimal number: {str(value)[:40]!r}")
    if not 0 <= number < 1 << 64:
        raise MalformedWebhook(field, "out of the uint64 range")
    return number


def timestamp(value: Any, field: str) -> datetime:
    """ISO-8601 with an offset (`Z` too; Graph's 7 fractional digits are cut to 6)."""
    if not isinstance(value, str):
        raise MalformedWebhook(field, "missing" if value is None else "not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedWebhook(field, f"not an ISO-8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise MalformedWebhook(field, "time without an offset")
    try:
        parsed.astimezone(UTC)  # year 1 at +01:00 or 9999 at -01:00 has no UTC time
    except OverflowError:
        raise MalformedWebhook(field, "time out of range") from None
    return parsed


def boolean(value: Any, field: str) -> bool:
    """JSON true/false; Graph's delta example also sends the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MalformedWebhook(field, f"not a boolean: {str(value)[:40]!r}")


def b64decode(value: Any, field: str) -> bytes:
    """base64url (Gmail's body.data) or standard base64 (Pub/Sub's data), padding optional."""
    if not isinstance(value, str):
        raise MalformedWebhook(field, "missing" if value is None else "not a string")
    text = value.strip().rstrip("=")
    if len(text) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9+/_-]*", text):
        raise MalformedWebhook(field, "not base64")
    try:
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedWebhook(field, "not base64") from None


def message_ids(header: str) -> list[str]:
    """The `<id>` tokens of a References / In-Reply-To header, angle brackets kept (as the
    domain compares Message-IDs); a header without brackets counts as one bare id."""
    found = re.findall(r"<[^<>\s]+>", header)
    if found:
        return found
    bare = header.strip()
    return [bare] if bare and " " not in bare else []


# --- Gmail push (Cloud Pub/Sub) ---------------------------------------------------------------


class GmailPush(BaseModel):
    """A Gmail mailbox changed: fetch history from your last historyId up to `history_id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    delivery_id: str  # gmail:<Pub/Sub messageId>, stable across redeliveries
    subscription: str
    email_address: str
    history_id: int
    publish_time: datetime | None = None


def parse_gmail_push(body: bytes | str) -> GmailPush:
    envelope = json_object(body)
    message = req_obj(envelope, "message", "")
    subscription = req_str(envelope, "subscription", "", max_len=MAX_ID_CHARS)
    # Pub/Sub sends both spellings (messageId and message_id); they must agree.
    ids = {k: message[k] for k in ("messageId", "message_id") if message.get(k) is not None}
    if not ids:
        raise MalformedWebhook("message.messageId", "missing")
    message_id = req_str(ids, next(iter(ids)), "message", max_len=MAX_ID_CHARS, header_safe=True)
    if len(set(ids.values())) > 1:
        raise MalformedWebhook("message.messageId", "messageId and message_id differ")
    published = message.get("publishTime", message.get("publish_time"))
    publish_time = None if published is None else timestamp(published, "message.publishTime")
    data = json_object(b64decode(message.get("data"), "message.data"), "message.data")
    email = req_str(data, "emailAddress", "message.data", max_len=320)
    if "@" not in email:
        raise MalformedWebhook("message.data.emailAddress", "not an email address")
    return GmailPush(delivery_id=f"gmail:{message_id}", subscription=subscription,
                     email_address=email,
                     history_id=uint64(data.get("historyId"), "message.data.historyId"),
                     publish_time=publish_time)


# --- Microsoft Graph --------------------------------------------------------------------------

ChangeType = Literal["created", "updated", "deleted"]
LifecycleEvent = Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]
CHANGE_TYPES: tuple[ChangeType, ...] = ("created", "updated", "deleted")
LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = ("reauthorizationRequired", "subscriptionRemoved",
                                                "missed")
_CHANGE_BY_NAME: dict[str, ChangeType] = {name: name for name in CHANGE_TYPES}
_LIFECYCLE_BY_NAME: dict[str, LifecycleEvent] = {name: name for name in LIFECYCLE_EVENTS}

# Expected clientState for a subscription id; None when the subscription is unknown to us.
ClientStateLookup = Callable[[str], str | None]


class GraphValidation(BaseModel):
    """Subscription handshake: answer 200, `Content-Type: text/plain`, body = `token`, in 10 s."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    token: str


class _GraphNotification(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    delivery_id: str  # graph:<sha256 hex>, see graph_delivery_id
    subscription_id: str
    tenant_id: str | None = None
    subscription_expires_at: datetime | None = None
    client_state_ok: bool
    rejection: str | None = None  # why it is not accepted (clientState); None when accepted

    @property
    def accepted(self) -> bool:
        return self.rejection is None


class GraphChange(_GraphNotification):
    """A resource changed (for mail: a message created, updated or deleted)."""

    kind: Literal["change"] = "change"
    change_type: ChangeType
    resource: str
    resource_id: str
    notification_id: str | None = None
    etag: str | None = None


class GraphLifecycle(_GraphNotification):
    """The subscription itself needs attention: renew it, recreate it, or resync (missed)."""

    kind: Literal["lifecycle"] = "lifecycle"
    lifecycle_event: LifecycleEvent


class GraphNotifications(BaseModel):
    """One POSTed notification collection, its items in the order received."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    items: list[GraphChange | GraphLifecycle]

    @property
    def changes(self) -> list[GraphChange]:
        return [n for n in self.items if isinstance(n, GraphChange)]

    @property
    def lifecycle(self) -> list[GraphLifecycle]:
        return [n for n in self.items if isinstance(n, GraphLifecycle)]

    @property
    def accepted(self) -> list[GraphChange | GraphLifecycle]:
        return [n for n in self.items if n.accepted]

    @property
    def rejected(self) -> list[GraphChange | GraphLifecycle]:
        return [n for n in self.items if not n.accepted]


def graph_delivery_id(*parts: str | None) -> str:
    """`graph:` + sha256 of the JSON array of the parts (absent ones as null), so the same
    notification delivered again gets the same id and no two distinct part lists collide."""
    canonical = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True)
    return "graph:" + hashlib.sha256(canonical.encode()).hexdigest()


def client_state_matches(received: str | None, expected: str | None) -> str | None:
    """None when `received` equals `expected` (constant time), else the rejection reason."""
    if expected is None:
        return "unknown subscription"
    if received is None:
        return "clientState missing"
    if not hmac.compare_digest(received.encode(), expected.encode()):
        return "clientState mismatch"
    return None


def parse_graph(body: bytes | str, query: Mapping[str, str],
                expected_client_state: ClientStateLookup) -> GraphValidation | GraphNotifications:
    """A POST to the Graph notification URL. `query` holds the URL-decoded query parameters."""
    if "validationToken" in query:
        token = query["validationToken"]
        if not token:
            raise MalformedWebhook("validationToken", "empty")
        if len(token) > MAX_VALIDATION_TOKEN:
            raise MalformedWebhook("validationToken",
                                   f"longer than {MAX_VALIDATION_TOKEN} characters")
        if not token.isprintable():
            raise MalformedWebhook("validationToken", "contains control characters")
        return GraphValidation(token=token)
    document = json_object(body)
    values = document.get("value")
    if not isinstance(values, list):
        raise MalformedWebhook("value", "missing" if values is None else "not a list")
    if not values:
        raise MalformedWebhook("value", "no notifications")
    items: list[GraphChange | GraphLifecycle] = []
    for index, item in enumerate(values):
        path = at("value", index)
        if not isinstance(item, dict):
            raise MalformedWebhook(path, "not an object")
        items.append(_graph_notification(item, path, expected_client_state))
    return GraphNotifications(items=items)


def _graph_notification(item: dict[str, Any], path: str,
                        expected_client_state: ClientStateLookup) -> GraphChange | GraphLifecycle:
    subscription_id = req_str(item, "subscriptionId", path, max_len=MAX_ID_CHARS)
    client_state = opt_str(item, "clientState", path)
    expires_raw = item.get("subscriptionExpirationDateTime")
    expires = None if expires_raw is None else timestamp(
        expires_raw, at(path, "subscriptionExpirationDateTime"))
    common: dict[str, Any] = {
        "subscription_id": subscription_id,
        "tenant_id": opt_str(item, "tenantId", path),
        "subscription_expires_at": expires,
    }
    rejection = client_state_matches(client_state, expected_client_state(subscription_id))
    common |= {"client_state_ok": rejection is None, "rejection": rejection}
    if "lifecycleEvent" in item:
        event = req_str(item, "lifecycleEvent", path)
        lifecycle_event = _LIFECYCLE_BY_NAME.get(event)
        if lifecycle_event is None:
            raise MalformedWebhook(at(path, "lifecycleEvent"), f"unknown event {event[:40]!r}")
        # The expiry tells a reauthorizationRequired before a renewal from one after it.
        delivery_id = graph_delivery_id("lifecycle", subscription_id, event, expires_raw,
                                        opt_str(item, "id", path))
        return GraphLifecycle(delivery_id=delivery_id, lifecycle_event=lifecycle_event, **common)
    change_name = req_str(item, "changeType", path)
    change_type = _CHANGE_BY_NAME.get(change_name)
    if change_type is None:
        raise MalformedWebhook(at(path, "changeType"), f"unknown change type {change_name[:40]!r}")
    resource = req_str(item, "resource", path, max_len=2048)
    data = req_obj(item, "resourceData", path)
    resource_id = req_str(data, "id", at(path, "resourceData"), max_len=2048)
    notification_id = opt_str(item, "id", path)
    etag = opt_str(data, "@odata.etag", at(path, "resourceData"))
    delivery_id = graph_delivery_id("change", subscription_id, change_type, resource,
                                    resource_id, notification_id, etag)
    return GraphChange(delivery_id=delivery_id, change_type=change_type, resource=resource,
                       resource_id=resource_id, notification_id=notification_id, etag=etag,
                       **common)
