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

The typed deliveries themselves (`GmailPush`, `GraphChange`, `GraphLifecycle`) and their stored
form are in `adapters.deliveries.model`; the generic JSON readers in
`adapters.providers.json_fields` (shared with the providers' API response parsers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.deliveries.model import (
    CHANGE_TYPES,
    LIFECYCLE_EVENTS,
    ChangeType,
    GmailPush,
    GraphChange,
    GraphLifecycle,
    LifecycleEvent,
)
from adapters.errors import MalformedPayload, MalformedWebhook
from adapters.providers.json_fields import (
    at,
    b64decode,
    json_object,
    opt_str,
    req_obj,
    req_str,
    timestamp,
    uint64,
)

MAX_VALIDATION_TOKEN = 1024  # Graph's tokens are ~100 characters; we echo it, so keep it small
MAX_ID_CHARS = 256  # ids that end up in a Nats-Msg-Id or a subject


@contextmanager
def _webhook_input() -> Iterator[None]:
    """The generic readers' errors, said to be the webhook's (400 with the field named)."""
    try:
        yield
    except MalformedWebhook:
        raise
    except MalformedPayload as exc:
        raise MalformedWebhook(exc.field, exc.reason) from None


# --- Gmail push (Cloud Pub/Sub) ---------------------------------------------------------------


def parse_gmail_push(body: bytes | str) -> GmailPush:
    with _webhook_input():
        return _gmail_push(body)


def _gmail_push(body: bytes | str) -> GmailPush:
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

_CHANGE_BY_NAME: dict[str, ChangeType] = {name: name for name in CHANGE_TYPES}
_LIFECYCLE_BY_NAME: dict[str, LifecycleEvent] = {name: name for name in LIFECYCLE_EVENTS}

# Expected clientState for a subscription id; None when the subscription is unknown to us.
ClientStateLookup = Callable[[str], str | None]


class GraphValidation(BaseModel):
    """Subscription handshake: answer 200, `Content-Type: text/plain`, body = `token`, in 10 s."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    token: str


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
    with _webhook_input():
        return _graph(body, query, expected_client_state)


def _graph(body: bytes | str, query: Mapping[str, str],
           expected_client_state: ClientStateLookup) -> GraphValidation | GraphNotifications:
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
