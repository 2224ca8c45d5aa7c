"""Where sync deliveries go (issue #4): the mailboxes that exist, folded from the event log, and
the mailbox a stored webhook delivery names.

`Directory` follows the log decoding only the few event kinds it folds (a worker follows every
worker's appends: the mail that makes up most of the log is skipped unread). It knows every
mailbox (all tenants) with its provider and address, which need a sync without a delivery (first
sync after MailboxConnected, catch-up after UserReactivated and MailboxReconnected, L3/S10,
until their cursor next moves), and every Graph subscription id ever recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from adapters.errors import MalformedWebhook
from domain import events as ev

if TYPE_CHECKING:
    from runners.services.engine import Engine

# webhook provider -> the domain's mailbox provider
DELIVERY_PROVIDERS = {"gmail": "gmail", "graph": "outlook"}
_GRAPH_USER = re.compile(r"^/?users(?:\('([^']+)'\)|/([^/]+))", re.IGNORECASE)


@dataclass(frozen=True)
class MailboxRef:
    tenant: str
    mailbox: str


@dataclass
class _Known:
    provider: str
    address: str
    user: str


DIRECTORY_EVENTS: tuple[type[ev.DomainEvent], ...] = (
    ev.PushSubscriptionCreated, ev.MailboxConnected, ev.MailboxAddressChanged,
    ev.MailboxReconnected, ev.UserReactivated, ev.MailboxCursorAdvanced,
    ev.MailboxScopeChanged)


def _directory_kinds(kind: type[ev.DomainEvent], data: bytes) -> bool:
    return issubclass(kind, DIRECTORY_EVENTS)


@dataclass
class Directory:
    """Which mailboxes exist (all tenants), folded from the event log, and which need a sync
    without a delivery: first sync after MailboxConnected, catch-up after UserReactivated and
    MailboxReconnected (L3, S10), until their cursor next moves."""

    position: int = 0
    mailboxes: dict[MailboxRef, _Known] = field(default_factory=dict)
    pending: set[MailboxRef] = field(default_factory=set)
    # every Graph subscription id ever recorded -> its mailbox (lifecycle notifications of a
    # replaced subscription still find the mailbox; the worker compares with the current one)
    subscriptions: dict[str, MailboxRef] = field(default_factory=dict)

    def fold(self, tenant: str, e: ev.DomainEvent) -> None:
        if isinstance(e, ev.PushSubscriptionCreated):
            if e.subscription_id is not None:
                self.subscriptions[e.subscription_id] = MailboxRef(tenant, e.mailbox)
        elif isinstance(e, ev.MailboxConnected):
            ref = MailboxRef(tenant, e.mailbox)
            self.mailboxes[ref] = _Known(e.provider, e.address.lower(), e.user)
            self.pending.add(ref)
        elif isinstance(e, ev.MailboxAddressChanged):
            known = self.mailboxes.get(MailboxRef(tenant, e.mailbox))
            if known is not None:
                known.address = e.address.lower()
        elif isinstance(e, ev.MailboxReconnected | ev.MailboxScopeChanged):
            # a new scope (S1, issue #13): folders that came into it are read at once
            self.pending.add(MailboxRef(tenant, e.mailbox))
        elif isinstance(e, ev.UserReactivated):
            self.pending.update(r for r, k in self.mailboxes.items()
                                if r.tenant == tenant and k.user == e.user)
        elif isinstance(e, ev.MailboxCursorAdvanced):
            self.pending.discard(MailboxRef(tenant, e.mailbox))

    def follow(self, engine: Engine, limit: int = 10_000) -> int:
        """Fold the log's new events; only the kinds `fold` looks at are decoded (the mail that
        makes up most of the log is skipped unread: a worker follows every worker's appends)."""
        read = 0
        while True:
            batch, last = engine.read_log_kept(self.position, limit, _directory_kinds)
            for item in batch:
                self.fold(item.event.tenant, item.event)
            stepped, self.position = last - self.position, last
            read += stepped
            if stepped < limit:  # (a gap in the positions costs at most one more read)
                return read

    def route(self, provider: str, address: str) -> list[MailboxRef]:
        address = address.lower()
        return sorted((r for r, k in self.mailboxes.items()
                       if k.provider == provider and k.address == address),
                      key=lambda r: (r.tenant, r.mailbox))

    def of_provider(self, provider: str) -> list[MailboxRef]:
        return sorted((r for r, k in self.mailboxes.items() if k.provider == provider),
                      key=lambda r: (r.tenant, r.mailbox))

    def take_pending(self) -> list[MailboxRef]:
        out = sorted(self.pending, key=lambda r: (r.tenant, r.mailbox))
        self.pending.clear()
        return out


class Unroutable(Exception):
    """The delivery names no mailbox we sync (acknowledged with a log line, not retried)."""


def _stored(payload: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedWebhook("body", "stored delivery is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedWebhook("body", "stored delivery is not an object")
    return data


def delivery_subscription(provider: str, payload: bytes) -> str | None:
    """The Graph subscription id a stored delivery names (None for Gmail)."""
    if provider != "graph":
        return None
    value = _stored(payload).get("subscription_id")
    return value if isinstance(value, str) and value else None


def delivery_lifecycle(provider: str, payload: bytes) -> tuple[str, str] | None:
    """(subscription id, lifecycle event) of a stored Graph lifecycle notification, else None."""
    if provider != "graph":
        return None
    data = _stored(payload)
    if data.get("kind") != "lifecycle":
        return None
    subscription, event = data.get("subscription_id"), data.get("lifecycle_event")
    if not isinstance(subscription, str) or not subscription:
        raise MalformedWebhook("subscription_id", "missing")
    if event not in ("missed", "reauthorizationRequired", "subscriptionRemoved"):
        raise MalformedWebhook("lifecycle_event", f"unknown event {str(event)[:40]!r}")
    return subscription, str(event)


def delivery_address(provider: str, payload: bytes) -> str | None:
    """The mailbox address a stored delivery names (Gmail `emailAddress`; Graph: the user
    segment of the notification's `resource`, `Users/{address}/Messages/{id}` — subscriptions
    are created on `/users/{address}/...`). None for Graph lifecycle notifications. Raises
    MalformedWebhook when the stored payload is not what the receiver stored."""
    data = _stored(payload)
    if provider == "gmail":
        address = data.get("email_address")
        if not isinstance(address, str) or "@" not in address:
            raise MalformedWebhook("email_address", "missing")
        return address
    if provider == "graph":
        if data.get("kind") == "lifecycle":
            return None
        resource = data.get("resource")
        if not isinstance(resource, str):
            raise MalformedWebhook("resource", "missing")
        match = _GRAPH_USER.match(resource)
        if match is None:
            raise Unroutable(f"resource names no user: {resource[:80]!r}")
        return (match.group(1) or match.group(2)).lower()
    raise MalformedWebhook("provider", f"unknown provider {provider!r}")
