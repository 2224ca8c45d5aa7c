"""Commands of mailboxes and their mail (SPEC §4, §6): connection, sync (from the sync workers),
deletions, push channels, sending, and the outbox's CRM-side requests (S7, S12)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.command_envelope import Command
from domain.events import (
    MailMessage,
    Provider,
)
from domain.input_rules import cleaned

__all__ = [
    "AcknowledgeOutboundMail", "AdvanceMailboxCursor", "ChangeMailboxAddress",
    "ChangeMailboxScope", "ConfirmMailboxDeletions", "ConnectMailbox", "DeleteMessage",
    "DeleteMessageAtProvider", "DeleteMessagesAtProvider", "DisconnectMailbox", "ImapCredentials",
    "MarkMessageRead", "OAuthCredentials", "PushReason", "ReconnectMailbox", "RecordDeadLetter",
    "RecordDeadLetterReplay", "RecordPushSubscription", "ReportMailboxGone", "ResyncMailbox",
    "ScopeAll", "ScopeLabels", "SendEmail", "SyncMessage", "UpdateMessage",
]


class ScopeAll(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    mode: Literal["all"]


class ScopeLabels(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    mode: Literal["labels"]
    labels: list[str] = Field(min_length=1)


class OAuthCredentials(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    access_token: str
    refresh_token: str | None = None
    expires_at: datetime | None = None


class ImapCredentials(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    host: str
    port: int = Field(gt=0, lt=65536)
    user: str
    password: str
    tls: bool = True


class ConnectMailbox(Command):
    cmd: Literal["ConnectMailbox"]
    mailbox: str = Field(min_length=1)
    user: str
    provider: Provider
    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    scope: Annotated[ScopeAll | ScopeLabels, Field(discriminator="mode")] | None = None
    backfill_days: int = Field(default=30, gt=0, le=36_500)  # a century: dates stay in range
    credentials: OAuthCredentials | ImapCredentials | None = None


class ChangeMailboxAddress(Command):
    cmd: Literal["ChangeMailboxAddress"]
    mailbox: str
    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


class ChangeMailboxScope(Command):
    """S1: the folders/labels a mailbox syncs, for mail synced from then on."""

    cmd: Literal["ChangeMailboxScope"]
    mailbox: str
    scope: Annotated[ScopeAll | ScopeLabels, Field(discriminator="mode")]


class DisconnectMailbox(Command):
    cmd: Literal["DisconnectMailbox"]
    mailbox: str


class ReconnectMailbox(Command):
    cmd: Literal["ReconnectMailbox"]
    mailbox: str


class ReportMailboxGone(Command):
    cmd: Literal["ReportMailboxGone"]
    mailbox: str


class SyncMessage(Command):
    cmd: Literal["SyncMessage"]
    mailbox: str
    message: MailMessage


class UpdateMessage(Command):
    cmd: Literal["UpdateMessage"]
    mailbox: str
    id: str
    labels: list[str] | None = None
    read: bool | None = None
    delivery_status: str | None = None


class DeleteMessageAtProvider(Command):
    cmd: Literal["DeleteMessageAtProvider"]
    mailbox: str
    id: str


class AdvanceMailboxCursor(Command):
    """Sync workers (not in SPEC §6's public table): the provider cursor after a delivery."""

    cmd: Literal["AdvanceMailboxCursor"]
    mailbox: str
    # IMAP: one cursor per folder, each with its UID set (`adapters.providers.imap.client`)
    cursor: str = Field(min_length=1, max_length=65536)
    delivery_id: str | None = None


class ResyncMailbox(Command):
    """Sync workers: the stored cursor cannot be used; resync the backfill window (S2, L3)."""

    cmd: Literal["ResyncMailbox"]
    mailbox: str
    reason: Literal["cursor_expired", "reactivated", "reconnected", "first_sync"]


class DeleteMessagesAtProvider(Command):
    """Sync workers: the messages one provider page reports deleted, judged as one batch by the
    L5 guard (more than the threshold of the mailbox's stored messages: all held)."""

    cmd: Literal["DeleteMessagesAtProvider"]
    mailbox: str
    ids: list[str] = Field(min_length=1)


class RecordDeadLetter(Command):
    """Sync workers: a delivery given up after its maximum attempts (no payload, no secrets)."""

    cmd: Literal["RecordDeadLetter"]
    dead_letter_id: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=32)
    delivery_id: str = Field(min_length=1, max_length=512)
    mailbox: str | None = None
    attempts: int = Field(ge=1)
    error: str = Field(max_length=2000)

    _clean_error = field_validator("error", mode="before")(cleaned)


class RecordDeadLetterReplay(Command):
    """Operators (`crmsync deadletters replay`): a dead letter was sent to the work queue again."""

    cmd: Literal["RecordDeadLetterReplay"]
    dead_letter_id: str = Field(min_length=1, max_length=200)
    delivery_id: str = Field(min_length=1, max_length=512)


PushReason = Literal[
    "missing", "expired", "expiring", "address_changed", "reauthorization_required",
    "subscription_removed", "renewal_refused", "removed_by_provider", "scope_changed"]


class RecordPushSubscription(Command):
    """Sync workers: the mailbox's push channel at the provider — a Microsoft Graph change
    subscription (`subscription_id`) or a Gmail watch (no id) — was `created` (with its
    `resource` and `expires_at`), `renewed` (a new `expires_at`) or `ended` (removed by the
    provider). No secret (clientState, token) is part of it."""

    cmd: Literal["RecordPushSubscription"]
    mailbox: str
    action: Literal["created", "renewed", "ended"]
    subscription_id: str | None = Field(default=None, min_length=1, max_length=256)
    resource: str | None = Field(default=None, min_length=1, max_length=2048)
    expires_at: datetime | None = None
    reason: PushReason

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return value


class ConfirmMailboxDeletions(Command):
    cmd: Literal["ConfirmMailboxDeletions"]
    mailbox: str
    apply: bool


class SendEmail(Command):
    cmd: Literal["SendEmail"]
    user: str
    mailbox: str
    kind: Literal["single", "bulk", "workflow"]
    from_: str | None = Field(default=None, alias="from")
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    subject: str
    body: str
    thread: str | None = None


class DeleteMessage(Command):
    """S12 from the CRM side (not in SPEC §6's table): the mailbox owner deletes a message; the
    CRM copy goes at once and the outbox deletes (trashes) it at the provider."""

    cmd: Literal["DeleteMessage"]
    user: str
    mailbox: str
    id: str


class MarkMessageRead(Command):
    """S12 from the CRM side: the mailbox owner marks a message read or unread; the CRM copy
    changes at once and the outbox sets the flag at the provider."""

    cmd: Literal["MarkMessageRead"]
    user: str
    mailbox: str
    id: str
    read: bool = True


class AcknowledgeOutboundMail(Command):
    """Outbox worker (service only): the provider's answer to an outbound request (`request` is
    the request id: `crm-N` for SendEmail, `out-N` otherwise). `provider_id` /
    `provider_thread_id`: the provider's ids of a sent message. `ok` false: given up after
    `attempts`; `error` says why."""

    cmd: Literal["AcknowledgeOutboundMail"]
    mailbox: str
    request: str = Field(min_length=1, max_length=200)
    ok: bool = True
    provider_id: str | None = Field(default=None, min_length=1, max_length=1000)
    provider_thread_id: str | None = Field(default=None, min_length=1, max_length=1000)
    error: str | None = Field(default=None, max_length=2000)
    attempts: int = Field(default=1, ge=1)

    _clean_error = field_validator("error", mode="before")(cleaned)


COMMANDS: tuple[type[Command], ...] = (
    ConnectMailbox, ChangeMailboxAddress, ChangeMailboxScope, DisconnectMailbox, ReconnectMailbox,
    ReportMailboxGone, SyncMessage, UpdateMessage, DeleteMessageAtProvider, AdvanceMailboxCursor,
    ResyncMailbox, DeleteMessagesAtProvider, RecordDeadLetter, RecordDeadLetterReplay,
    RecordPushSubscription, ConfirmMailboxDeletions, SendEmail, DeleteMessage, MarkMessageRead,
    AcknowledgeOutboundMail,
)
