"""The one typed webhook delivery: `GmailPush | GraphChange | GraphLifecycle`.

The receiver parses a provider's body into one of these (`adapters.deliveries.webhooks`); the
inbox stores it as JSON (`encode`); a work queue decodes the stored bytes once when it fetches
them (`read_stored`) and hands the typed value on to the sync worker and the mail directory.
Nothing else reads a delivery's JSON.

Stored bytes stay readable across versions: the stored form is the model's JSON. Gmail pushes
stored before `kind` existed (no `kind` key) decode as Gmail pushes, since the queue knows the
provider of each delivery (the subject or the inbox row) and decodes by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from adapters.errors import MalformedWebhook

ChangeType = Literal["created", "updated", "deleted"]
LifecycleEvent = Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]
CHANGE_TYPES: tuple[ChangeType, ...] = ("created", "updated", "deleted")
LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = ("reauthorizationRequired", "subscriptionRemoved",
                                                "missed")


class GmailPush(BaseModel):
    """A Gmail mailbox changed: fetch history from your last historyId up to `history_id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    provider: ClassVar[str] = "gmail"
    kind: Literal["gmail"] = "gmail"
    delivery_id: str  # gmail:<Pub/Sub messageId>, stable across redeliveries
    subscription: str
    email_address: str
    history_id: int
    publish_time: datetime | None = None

    @field_validator("email_address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("not an email address")
        return value


class _GraphNotification(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    provider: ClassVar[str] = "graph"
    delivery_id: str  # graph:<sha256 hex>, see webhooks.graph_delivery_id
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


GraphNotice = Annotated[GraphChange | GraphLifecycle, Field(discriminator="kind")]
WebhookDelivery = GmailPush | GraphChange | GraphLifecycle
PROVIDERS: tuple[str, ...] = ("gmail", "graph")

_GMAIL: TypeAdapter[GmailPush] = TypeAdapter(GmailPush)
_GRAPH: TypeAdapter[GraphChange | GraphLifecycle] = TypeAdapter(GraphNotice)


@dataclass(frozen=True)
class Undecodable:
    """Stored bytes that are no delivery (written by hand, or damaged): kept on the queued
    delivery so that the worker dead-letters it with the reason instead of the queue failing."""

    field: str
    reason: str

    def error(self) -> MalformedWebhook:
        return MalformedWebhook(self.field, self.reason)


def encode(delivery: WebhookDelivery) -> bytes:
    """The stored form: the model's JSON."""
    return delivery.model_dump_json().encode()


def decode(provider: str, payload: bytes) -> WebhookDelivery:
    """A stored delivery of `provider`; MalformedWebhook names the field that does not fit."""
    try:
        if provider == "gmail":
            return _GMAIL.validate_json(payload)
        if provider == "graph":
            return _GRAPH.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = first["loc"][1:] if first["loc"][:1] in (("change",), ("lifecycle",)) \
            else first["loc"]  # a Graph error's path starts with the kind it tried
        field = ".".join(str(part) for part in loc) or "body"
        raise MalformedWebhook(field, f"stored delivery: {first['msg']}") from None
    raise MalformedWebhook("provider", f"unknown provider {provider[:40]!r}")


def read_stored(provider: str, payload: bytes) -> WebhookDelivery | Undecodable:
    """`decode`, with unreadable bytes as a value (for the queues' fetch)."""
    try:
        return decode(provider, payload)
    except MalformedWebhook as exc:
        return Undecodable(exc.field, exc.reason)
