"""Events of mailboxes and their mail (SPEC §4): connection, sync, deletions, push channels,
and the outbox's CRM-side changes executed at the provider (S7, S12, S14)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from domain.event_base import Attachment, DomainEvent, MailMessage, Provider

__all__ = [
    "AttachmentRejected", "CredentialsRemoved", "DeadLetterReplayed", "DeliveryDeadLettered",
    "DeliverySkipped", "EmailSent", "MailboxAddressChanged", "MailboxConnected",
    "MailboxCursorAdvanced", "MailboxDeletionsConfirmed", "MailboxDisconnected",
    "MailboxReconnected", "MailboxReportedGone", "MailboxResyncStarted", "MailboxScopeChanged",
    "MessageDeletedAtProvider", "MessageDeletionHeld", "MessageDeletionRequested",
    "MessageReadRequested", "MessageSkipped", "MessageSynced", "MessageUpdated",
    "OutboundCopyMatched", "OutboundMailAcknowledged", "PushSubscriptionCreated",
    "PushSubscriptionEnded", "PushSubscriptionRenewed", "RefusedAttachment",
]


# --- mailboxes --------------------------------------------------------------------------------


class MailboxConnected(DomainEvent):
    mailbox: str
    user: str
    provider: Provider
    address: str
    scope: dict[str, Any]
    backfill_days: int
    credentials_set: bool


class MailboxAddressChanged(DomainEvent):
    mailbox: str
    address: str


class MailboxScopeChanged(DomainEvent):
    """S1: applies to mail synced from now on; mail synced before stays."""

    mailbox: str
    scope: dict[str, Any]


class MailboxDisconnected(DomainEvent):
    mailbox: str


class MailboxReconnected(DomainEvent):
    mailbox: str


class MailboxReportedGone(DomainEvent):
    mailbox: str


class CredentialsRemoved(DomainEvent):
    mailbox: str


class MailboxCursorAdvanced(DomainEvent):
    """The provider cursor (Gmail historyId, Graph deltaLink, IMAP UIDVALIDITY/UIDNEXT/MODSEQ)
    after a delivery was synced."""

    mailbox: str
    cursor: str
    delivery_id: str | None = None


class DeliverySkipped(DomainEvent):
    """L1/S10/L4: a provider delivery that was not synced; the cursor stays where it was."""

    mailbox: str
    delivery_id: str | None
    reason: str


class MailboxResyncStarted(DomainEvent):
    """S2/L3: sync restarts from the backfill window, most recent first; nothing is deleted."""

    mailbox: str
    reason: str
    since: datetime


class DeliveryDeadLettered(DomainEvent):
    """A provider delivery given up after `attempts` tries; kept in the dead-letter queue under
    `dead_letter_id` for replay. No payload, no credentials, no bodies."""

    dead_letter_id: str
    provider: str
    delivery_id: str
    mailbox_id: str | None = None  # not `mailbox`: the mailbox may be unknown
    attempts: int
    error: str


class DeadLetterReplayed(DomainEvent):
    """A dead letter was put back on the work queue."""

    dead_letter_id: str
    delivery_id: str


class PushSubscriptionCreated(DomainEvent):
    """The mailbox's push channel was (re)created at the provider: a Microsoft Graph change
    subscription (`subscription_id`) or a Gmail watch (no id), on `resource`, until
    `expires_at`. `reason`: `missing` (the mailbox had none), `expired`, `address_changed`
    (S9: the old one watches the old address), `subscription_removed` (Graph removed it:
    lifecycle notification), `renewal_refused` (the provider no longer knew it). `replaces`:
    the subscription it takes over from."""

    mailbox: str
    subscription_id: str | None
    resource: str
    expires_at: datetime
    reason: str
    replaces: str | None = None


class PushSubscriptionRenewed(DomainEvent):
    """The mailbox's push channel now runs until `expires_at` (`reason`: `expiring`, or Graph's
    `reauthorization_required` lifecycle notification)."""

    mailbox: str
    subscription_id: str | None
    expires_at: datetime
    reason: str


class PushSubscriptionEnded(DomainEvent):
    """The mailbox's push channel is gone at the provider (`removed_by_provider`)."""

    mailbox: str
    subscription_id: str | None
    reason: str


class RefusedAttachment(Attachment):
    """An attachment S8 refused (not kept with the message), and why."""

    reason: str


class MessageSynced(DomainEvent):
    mailbox: str
    thread: str
    message: MailMessage  # with the attachments S8 allows
    crm_initiated: bool = False
    # S8 `drop_attachment`: the refused ones (message content, like the message's attachments;
    # each also has its AttachmentRejected event)
    refused: list[RefusedAttachment] = []


class MessageUpdated(DomainEvent):
    mailbox: str
    id: str
    labels: list[str] | None = None
    read: bool | None = None
    delivery_status: str | None = None


class MessageDeletedAtProvider(DomainEvent):
    mailbox: str
    id: str


class MessageDeletionHeld(DomainEvent):
    """L5: a deletion that the mass-deletion guard did not apply; the mailbox is now suspect."""

    mailbox: str
    id: str
    reason: str


class MailboxDeletionsConfirmed(DomainEvent):
    mailbox: str
    applied: bool
    ids: list[str]


class MessageSkipped(DomainEvent):
    mailbox: str
    id: str
    reason: str


class AttachmentRejected(DomainEvent):
    mailbox: str
    id: str
    attachment: str
    reason: str


class EmailSent(DomainEvent):
    """A CRM-initiated email (S7, S11): recorded here, delivered by the outbox worker."""

    user: str
    mailbox: str
    kind: Literal["single", "bulk", "workflow"]
    thread: str
    message: MailMessage


# --- outbox (S7, S12: CRM-side changes executed at the provider) ---------------------------------


class MessageDeletionRequested(DomainEvent):
    """The owner deleted a message in the CRM (S12): the CRM copy is gone at once (not subject
    to the L5 guard, which is about provider-side deletions); `request` is for the outbox."""

    mailbox: str
    id: str
    request: str


class MessageReadRequested(DomainEvent):
    """The owner marked a message read/unread in the CRM (S12): applied at once, then at the
    provider by the outbox."""

    mailbox: str
    id: str
    read: bool
    request: str


class OutboundMailAcknowledged(DomainEvent):
    """The outbox's answer to an outbound request (EmailSent, MessageDeletionRequested,
    MessageReadRequested). For a send: the message becomes `sent` (with the provider's ids) or
    `failed`."""

    mailbox: str
    request: str
    id: str
    operation: Literal["send", "delete", "read"]
    ok: bool
    provider_id: str | None = None
    provider_thread_id: str | None = None
    error: str | None = None
    attempts: int = 1


class OutboundCopyMatched(DomainEvent):
    """The provider's copy of a CRM-sent message arrived by sync (same provider id as the ack,
    or the same RFC Message-ID): it is the `crm-N` message, not a second copy (S14)."""

    mailbox: str
    id: str
    provider_id: str
    provider_thread_id: str | None = None
    labels: list[str] = []
    read: bool | None = None


EVENTS: tuple[type[DomainEvent], ...] = (
    MailboxConnected, MailboxAddressChanged, MailboxScopeChanged, MailboxDisconnected,
    MailboxReconnected, MailboxReportedGone, CredentialsRemoved, MailboxCursorAdvanced,
    DeliverySkipped, MailboxResyncStarted, DeliveryDeadLettered, DeadLetterReplayed,
    PushSubscriptionCreated, PushSubscriptionRenewed, PushSubscriptionEnded, MessageSynced,
    MessageUpdated, MessageDeletedAtProvider, MessageDeletionHeld, MailboxDeletionsConfirmed,
    MessageSkipped, AttachmentRejected, EmailSent, MessageDeletionRequested, MessageReadRequested,
    OutboundMailAcknowledged, OutboundCopyMatched,
)
