"""Domain events: immutable, past tense, one class per kind of change (SPEC E1, E2).

Every event carries the envelope fields of E2 (tenant, actor, occurred_at, correlation_id) and the
`command_id` of the command that caused it, so idempotency (E5) is a pure function of the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "manager", "member"]
RecordType = Literal["lead", "contact", "deal"]
Level = Literal["not_visible", "visible", "visible_if_owner", "visible_if_owner_or_collaborator"]
Provider = Literal["gmail", "outlook", "imap"]
Stage = Literal["open", "won", "lost", "unqualified"]
CustomerStatus = Literal["none", "current", "past"]
AddressSetting = Literal["shared", "unshared", "default"]

# L2: what an erased content field reads as once its owner's key is destroyed. It holds a NUL,
# which no command may carry (E8), so it is never a real subject, body or name.
ERASED = "\x00erased"


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    size: int
    content_type: str


class MailMessage(BaseModel):
    """One email as observed in one mailbox (the SyncMessage payload)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    id: str
    message_id: str | None = None
    thread_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] | None = None
    from_: str = Field(alias="from")
    to: list[str]
    cc: list[str] = []
    bcc: list[str] = []
    subject: str
    body: str = ""
    sent_at: datetime
    labels: list[str] = []
    attachments: list[Attachment] = []
    delivery_status: str | None = None
    read: bool = False

    def participants(self) -> set[str]:
        return {a.lower() for a in [self.from_, *self.to, *self.cc, *self.bcc]}


class DomainEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str
    actor: str
    occurred_at: datetime
    correlation_id: str
    command_id: str | None = None


# --- tenant and users -------------------------------------------------------------------------


class TenantConfigured(DomainEvent):
    settings: dict[str, Any]


class UserAdded(DomainEvent):
    user: str
    email: str
    role: Role
    manager: str | None = None


class UserManagerChanged(DomainEvent):
    user: str
    manager: str | None


class UserDeactivated(DomainEvent):
    user: str


class UserReactivated(DomainEvent):
    user: str
    # L4: what the caller should know (e.g. a mailbox that is gone: it will not sync, its
    # history is kept); recorded so the answer can be given again from the log
    warnings: list[str] = []


class UserDeleted(DomainEvent):
    user: str
    reassigned_to: str | None = None


class TokensRevoked(DomainEvent):
    """Every bearer token of `user` issued up to `occurred_at` is refused from now on (§8)."""

    user: str


class UserContentErased(DomainEvent):
    """L2: the user's content key is destroyed, so their content is erased wherever it was
    stored (log, views, snapshots). Recorded with UserDeleted; the store destroys the key once
    this event is durable."""

    user: str


class GlobalVisibilitySet(DomainEvent):
    user: str
    record_type: RecordType
    level: Level


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


# --- records ----------------------------------------------------------------------------------


class LeadCreated(DomainEvent):
    record: str
    owner: str
    name: str
    emails: list[str]


class ContactCreated(DomainEvent):
    record: str
    owner: str
    name: str
    kind: Literal["person", "company"]
    emails: list[str]
    customer_status: CustomerStatus = "none"
    via: Literal["command", "smart_bcc", "contact_sync"] = "command"


class ContactUpdated(DomainEvent):
    record: str
    fields: dict[str, Any]


class DealCreated(DomainEvent):
    record: str
    owner: str
    name: str
    contacts: list[str]
    stage: Stage


class DealStageChanged(DomainEvent):
    record: str
    stage: Stage


class DealContactLinked(DomainEvent):
    deal: str
    contact: str


class DealContactUnlinked(DomainEvent):
    deal: str
    contact: str


class RecordOwnerChanged(DomainEvent):
    record: str
    owner: str
    previous_owner: str


class CollaboratorAdded(DomainEvent):
    record: str
    user: str


class CollaboratorRemoved(DomainEvent):
    record: str
    user: str


# --- visibility -------------------------------------------------------------------------------


class ThreadLinked(DomainEvent):
    user: str
    thread: str
    record: str


class ThreadUnlinked(DomainEvent):
    user: str
    thread: str
    record: str


class AddressSettingChanged(DomainEvent):
    """ShareAddress / UnshareAddress and their cascades (V2, V4-V6).

    `setting` is `shared`, `unshared`, or `default` (pinned "no manual setting", used when an
    uncascaded unshare must keep a deal's effective visibility, V6). `cause` says which command
    or cascade produced it.
    """

    user: str
    record: str
    address: str
    setting: AddressSetting
    cause: Literal["share", "unshare", "cascade", "pin"]


class ThreadMarked(DomainEvent):
    """MarkThreadShared / MarkThreadPrivate (V1)."""

    user: str
    threads: list[str]
    shared: bool


# --- audit of input -------------------------------------------------------------------------


class CommandRejected(DomainEvent):
    cmd: str
    field: str
    reason: str
    # the known mailbox of a rejected mailbox command (its sync status counts it); not `mailbox`:
    # most rejections have none
    mailbox_id: str | None = None


class CommandHadNoEffect(DomainEvent):
    """A command with a `command_id` that changed nothing: remembered so that a re-application
    stays a no-op whatever happened since (E5)."""

    cmd: str


class ContactSyncCommandRecorded(DomainEvent):
    """Contact-sync commands (SPEC §5) are recorded; their behaviour arrives with contact sync."""

    cmd: str
    payload: dict[str, Any]


class ExternalContactChangeQueued(DomainEvent):
    """Something a user's external address book must be told (C2, C3, C4, C6): the contact-sync
    runner executes it against the provider and answers with AcknowledgeExternalContactChange.

    - `upsert`: write `fields` and `categories` (the Base categories the contact must carry, C2)
      to `external_id`, or create a new external contact when `external_id` is None.
    - `revert_category_rename`: rename the external category `category_old` back to
      `category_new` (C3).
    - `remove`: the user may no longer access `record` (C6); take it out of their book.
    """

    change_id: str  # unique within the tenant
    user: str
    provider: Literal["exchange"] = "exchange"
    operation: Literal["upsert", "revert_category_rename", "remove"]
    record: str | None = None
    external_id: str | None = None
    fields: dict[str, Any] = {}
    categories: list[str] = []
    category_old: str | None = None
    category_new: str | None = None


class ExternalContactChangeAcknowledged(DomainEvent):
    """The provider's answer to a queued change (see AcknowledgeExternalContactChange)."""

    change_id: str
    user: str
    external_id: str | None = None
    ok: bool = True
    error: str | None = None


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


# --- contact sync and merge (SPEC §5; rules in domain/contacts.py) ---------------------------


class ContactSyncConnected(DomainEvent):
    """C1: the user's external book syncs; `categories` are the external categories imported."""

    user: str
    provider: Literal["exchange"] = "exchange"
    categories: list[str]


class ExternalContactSynced(DomainEvent):
    """C1, C7, C8: an external contact came in. `record` is the CRM contact it is linked to:
    a new one (`created`), an existing one matched by email (`matched`), or the one it was
    already linked to. `fields` are the external values, modified at `modified_at`; the
    contact's current values follow by C8 (newest wins, older kept)."""

    user: str
    external_id: str
    record: str
    fields: dict[str, Any]
    categories: list[str]
    modified_at: datetime
    created: bool = False
    matched: bool = False


class ExternalContactDeleted(DomainEvent):
    """C5: a deletion in the external book, recorded and not applied: the CRM contact stays;
    the link is detached so the book is not written to (or refilled) for that contact again."""

    user: str
    external_id: str
    record: str


class ExternalCategoryRenamed(DomainEvent):
    """C3: a category rename observed in the user's book. `base`: a Base category (reverted by
    a queued `revert_category_rename`); otherwise one of the user's imported categories, whose
    new name is imported from then on."""

    user: str
    old: str
    new: str
    base: bool


class ContactsMerged(DomainEvent):
    """C9: `merged` contacts merged into `survivor`. `moved`: external links [user, external
    id, from record] the survivor takes over (per user: its own, else the most recently
    modified); `detached`: links [user, external id] no longer synced. Nothing is destroyed."""

    survivor: str
    merged: list[str]
    moved: list[list[str]] = []
    detached: list[list[str]] = []


class ContactUnmerged(DomainEvent):
    """C10: `record` is a contact of its own again, with its own links (`restored`: [user,
    external id]) and its own field values."""

    record: str
    survivor: str
    restored: list[list[str]] = []


EVENT_TYPES: tuple[type[DomainEvent], ...] = (
    TenantConfigured, UserAdded, UserManagerChanged, UserDeactivated, UserReactivated,
    UserDeleted, GlobalVisibilitySet, MailboxConnected, MailboxAddressChanged,
    MailboxDisconnected, MailboxReconnected, MailboxReportedGone, CredentialsRemoved,
    MailboxCursorAdvanced, DeliverySkipped, MailboxResyncStarted,
    MessageSynced, MessageUpdated, MessageDeletedAtProvider, MessageDeletionHeld,
    MailboxDeletionsConfirmed, MessageSkipped, AttachmentRejected, EmailSent, LeadCreated,
    ContactCreated, ContactUpdated, DealCreated, DealStageChanged, DealContactLinked,
    DealContactUnlinked, RecordOwnerChanged, CollaboratorAdded, CollaboratorRemoved,
    ThreadLinked, ThreadUnlinked, AddressSettingChanged, ThreadMarked, CommandRejected,
    CommandHadNoEffect, ContactSyncCommandRecorded, ExternalContactChangeQueued,
    ExternalContactChangeAcknowledged, MessageDeletionRequested, MessageReadRequested,
    OutboundMailAcknowledged, OutboundCopyMatched, ContactSyncConnected, ExternalContactSynced,
    ExternalContactDeleted, ExternalCategoryRenamed, ContactsMerged, ContactUnmerged,
)
EVENT_TYPES += (DeliveryDeadLettered, DeadLetterReplayed)  # sync workers (issue #4)
EVENT_TYPES += (TokensRevoked,)  # bearer tokens (issue #10)
EVENT_TYPES += (MailboxScopeChanged,)  # scope changes (issue #13)
EVENT_TYPES += (PushSubscriptionCreated, PushSubscriptionRenewed,  # push channels (issue #4)
                PushSubscriptionEnded)
EVENT_TYPES += (UserContentErased,)  # crypto-shredding (issue #11)
