"""Where sync deliveries go (issue #4): the mailboxes that exist, folded from the event log, and
the mailbox a webhook delivery names (typed, `adapters.deliveries.model`: decoded once by the
work queue, never read here as JSON).

`Directory` follows the log decoding only the few event kinds it folds (a worker follows every
worker's appends: the mail that makes up most of the log is skipped unread). It knows every
mailbox (all tenants) with its provider and address, which need a sync without a delivery (first
sync after MailboxConnected, catch-up after UserReactivated and MailboxReconnected, L3/S10,
until their cursor next moves), and every Graph subscription id ever recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters.deliveries.model import GmailPush, GraphChange
from domain import events as ev
from projections.projector import Logged
from runners.services.follower import LogFollower

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

    follower: LogFollower = field(default_factory=lambda: LogFollower(
        "mail directory", batch=10_000, keep=_directory_kinds))
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

    def follow(self, engine: Engine) -> int:
        """Fold the log's new events; only the kinds `fold` looks at are decoded (the mail that
        makes up most of the log is skipped unread: a worker follows every worker's appends)."""
        return self.follower.read(engine, self._fold_batch)

    def _fold_batch(self, batch: Sequence[Logged]) -> None:
        for item in batch:
            self.fold(item.event.tenant, item.event)

    @property
    def position(self) -> int:
        return self.follower.position

    def route(self, provider: str, address: str) -> list[MailboxRef]:
        address = address.lower()
        return sorted((r for r, k in self.mailboxes.items()
                       if k.provider == provider and k.address == address),
                      key=lambda r: (r.tenant, r.mailbox))

    def named_by(self, delivery: GmailPush | GraphChange) -> list[MailboxRef]:
        """The mailboxes a delivery names: a Graph change by its subscription id when we
        recorded it, else (and Gmail always) every mailbox of the provider with the address it
        names (all tenants). Unroutable when a Graph resource names no user."""
        if isinstance(delivery, GraphChange) and delivery.subscription_id in self.subscriptions:
            return [self.subscriptions[delivery.subscription_id]]
        return self.route(DELIVERY_PROVIDERS[delivery.provider], delivery_address(delivery))

    def of_provider(self, provider: str) -> list[MailboxRef]:
        return sorted((r for r, k in self.mailboxes.items() if k.provider == provider),
                      key=lambda r: (r.tenant, r.mailbox))

    def take_pending(self, owns: Callable[[str], bool] = lambda tenant: True
                     ) -> list[MailboxRef]:
        """The pending mailboxes of the tenants `owns` says; the others stay pending (another
        worker syncs them, or this one once their partition is its own)."""
        out = sorted((r for r in self.pending if owns(r.tenant)),
                     key=lambda r: (r.tenant, r.mailbox))
        self.pending.difference_update(out)
        return out


class Unroutable(Exception):
    """The delivery names no mailbox we sync (acknowledged with a log line, not retried)."""


def delivery_address(delivery: GmailPush | GraphChange) -> str:
    """The mailbox address a delivery names: Gmail's `emailAddress`; for Graph the user
    segment of the notification's `resource`, `Users/{address}/Messages/{id}` (subscriptions
    are created on `/users/{address}/...`). Unroutable when the resource names no user."""
    if isinstance(delivery, GmailPush):
        return delivery.email_address
    match = _GRAPH_USER.match(delivery.resource)
    if match is None:
        raise Unroutable(f"resource names no user: {delivery.resource[:80]!r}")
    return (match.group(1) or match.group(2)).lower()
