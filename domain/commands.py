"""The public command vocabulary of SPEC §6, parsed and validated with pydantic.

Every command is one JSON object with `cmd` and `tenant`, optional `at`, `actor` and `command_id`.
Unknown commands, unknown fields and wrong types are rejected here, before any rule runs, and
so is input that cannot be stored faithfully (E8: control characters, lone surrogates, absurd
sizes; `domain.input_rules`), named by its path (`message.subject`), however the command was
built (JSON, or a sync worker's provider message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domain.errors import Rejection
from domain.events import (
    Attachment,
    CustomerStatus,
    Level,
    MailMessage,
    Provider,
    RecordType,
    Role,
    Stage,
)
from domain.input_rules import InputRefused, cleaned, refusal, safe_name

__all__ = ["COMMANDS", "Attachment", "Command", "MailMessage", "describe", "parse_command"]


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    cmd: str
    tenant: str = Field(min_length=1)
    at: datetime | None = None
    actor: str | None = None
    command_id: str | None = None

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _storable(self) -> Command:
        found = refusal(self)
        if found is not None:
            raise found  # a ValueError: pydantic keeps it (and its field) in the error's ctx
        return self


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


class AddUser(Command):
    cmd: Literal["AddUser"]
    user: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    role: Role
    manager: str | None = None


class ChangeUserManager(Command):
    cmd: Literal["ChangeUserManager"]
    user: str
    manager: str | None


class DeactivateUser(Command):
    cmd: Literal["DeactivateUser"]
    user: str


class ReactivateUser(Command):
    cmd: Literal["ReactivateUser"]
    user: str


class DeleteUser(Command):
    cmd: Literal["DeleteUser"]
    user: str
    reassign_to: str | None = None


class RevokeTokens(Command):
    """Refuse every bearer token of `user` issued until now (SPEC §8)."""

    cmd: Literal["RevokeTokens"]
    user: str


class ConfigureTenant(Command):
    cmd: Literal["ConfigureTenant"]
    bcc_address: str | None = None
    sending_domain: str | None = None
    attachment_policy: Literal["drop_attachment", "skip_message"] | None = None
    attachment_max_bytes: int | None = Field(default=None, gt=0)
    allowed_attachment_types: list[str] | None = None
    mass_delete_threshold: float | None = Field(default=None, gt=0, le=1)


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


class CreateLead(Command):
    cmd: Literal["CreateLead"]
    record: str = Field(min_length=1)
    owner: str
    name: str
    emails: list[str]


class CreateContact(Command):
    cmd: Literal["CreateContact"]
    record: str = Field(min_length=1)
    owner: str
    name: str
    kind: Literal["person", "company"]
    emails: list[str]
    customer_status: CustomerStatus | None = None


class UpdateContact(Command):
    cmd: Literal["UpdateContact"]
    record: str
    fields: dict[str, Any] = Field(min_length=1)


class CreateDeal(Command):
    cmd: Literal["CreateDeal"]
    record: str = Field(min_length=1)
    owner: str
    name: str
    contacts: list[str]
    stage: Stage


class ChangeDealStage(Command):
    cmd: Literal["ChangeDealStage"]
    record: str
    stage: Stage


class LinkDealContact(Command):
    cmd: Literal["LinkDealContact"]
    deal: str
    contact: str


class UnlinkDealContact(Command):
    cmd: Literal["UnlinkDealContact"]
    deal: str
    contact: str


class ChangeOwner(Command):
    cmd: Literal["ChangeOwner"]
    record: str
    owner: str


class AddCollaborator(Command):
    cmd: Literal["AddCollaborator"]
    record: str
    user: str


class RemoveCollaborator(Command):
    cmd: Literal["RemoveCollaborator"]
    record: str
    user: str


class LinkThread(Command):
    cmd: Literal["LinkThread"]
    user: str
    thread: str
    record: str


class UnlinkThread(Command):
    cmd: Literal["UnlinkThread"]
    user: str
    thread: str
    record: str


class SetGlobalVisibility(Command):
    cmd: Literal["SetGlobalVisibility"]
    user: str
    record_type: RecordType
    level: Level


class ShareAddress(Command):
    cmd: Literal["ShareAddress"]
    user: str
    record: str
    address: str


class UnshareAddress(Command):
    cmd: Literal["UnshareAddress"]
    user: str
    record: str
    address: str
    cascade: bool


class MarkThreadShared(Command):
    cmd: Literal["MarkThreadShared"]
    user: str
    threads: list[str] = Field(min_length=1)


class MarkThreadPrivate(Command):
    cmd: Literal["MarkThreadPrivate"]
    user: str
    threads: list[str] = Field(min_length=1)


class ConnectContactSync(Command):
    cmd: Literal["ConnectContactSync"]
    user: str
    provider: Literal["exchange"]
    categories: list[str]


class SyncExternalContact(Command):
    cmd: Literal["SyncExternalContact"]
    user: str
    external_id: str
    folder: Literal["private", "shared", "public"]
    fields: dict[str, Any]
    categories: list[str]
    modified_at: datetime


class DeleteExternalContact(Command):
    cmd: Literal["DeleteExternalContact"]
    user: str
    external_id: str


class RenameExternalCategory(Command):
    cmd: Literal["RenameExternalCategory"]
    user: str
    old: str
    new: str


class MergeContacts(Command):
    cmd: Literal["MergeContacts"]
    survivor: str
    merged: list[str] = Field(min_length=1)


class UnmergeContact(Command):
    cmd: Literal["UnmergeContact"]
    record: str


class AcknowledgeExternalContactChange(Command):
    """Contact-sync runner (not in SPEC §6's public table): the external book's answer to an
    `ExternalContactChangeQueued` change. `external_id`: the external contact the change wrote
    (set when the change created one). `ok` false: the provider refused it; `error` says why."""

    cmd: Literal["AcknowledgeExternalContactChange"]
    user: str
    change_id: str = Field(min_length=1, max_length=200)
    external_id: str | None = None
    ok: bool = True
    error: str | None = Field(default=None, max_length=2000)

    _clean_error = field_validator("error", mode="before")(cleaned)


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


COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        AddUser, ChangeUserManager, DeactivateUser, ReactivateUser, DeleteUser, ConfigureTenant,
        RevokeTokens,
        ConnectMailbox, ChangeMailboxAddress, ChangeMailboxScope, DisconnectMailbox,
        ReconnectMailbox,
        ReportMailboxGone, SyncMessage, UpdateMessage, DeleteMessageAtProvider,
        AdvanceMailboxCursor, ResyncMailbox,
        DeleteMessagesAtProvider, RecordDeadLetter, RecordDeadLetterReplay,
        RecordPushSubscription,
        ConfirmMailboxDeletions, SendEmail, CreateLead, CreateContact, UpdateContact, CreateDeal,
        ChangeDealStage, LinkDealContact, UnlinkDealContact, ChangeOwner, AddCollaborator,
        RemoveCollaborator, LinkThread, UnlinkThread, SetGlobalVisibility, ShareAddress,
        UnshareAddress, MarkThreadShared, MarkThreadPrivate, ConnectContactSync,
        SyncExternalContact, DeleteExternalContact, RenameExternalCategory, MergeContacts,
        UnmergeContact, AcknowledgeExternalContactChange,
        DeleteMessage, MarkMessageRead, AcknowledgeOutboundMail,
    )
}


def parse_command(raw: bytes | str | dict[str, Any]) -> Command:
    """Parse one command (a JSON text or an already-decoded object).

    Raises Rejection with the command name (or `?`), the offending field and a reason.
    """
    if isinstance(raw, dict):
        obj: Any = raw
        try:
            text = orjson.dumps(raw)
        except orjson.JSONEncodeError:  # a lone surrogate, a huge integer, a non-JSON value
            name = raw.get("cmd")
            shown = safe_name(name) if isinstance(name, str) else None
            raise Rejection(shown or "?", "(command)",
                            "not storable as JSON (lone surrogate or out-of-range value)"
                            ) from None
    else:
        text = raw.encode() if isinstance(raw, str) else raw
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise Rejection("?", "(line)", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejection("?", "(line)", "a command must be a JSON object")
    name = obj.get("cmd")
    if not isinstance(name, str):
        raise Rejection("?", "cmd", "missing or not a string")
    cls = COMMANDS.get(name)
    if cls is None:  # the caller's text is echoed only when it is short and clean (E8)
        raise Rejection(safe_name(name) or "?", "cmd", "unknown command")
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        field, reason = describe(exc)
        raise Rejection(name, field, reason) from None


def describe(exc: ValidationError) -> tuple[str, str]:
    """The first error of a command's validation as (field path, reason), never echoing input
    that cannot be stored (a dict key in a path is shown only when clean)."""
    err = exc.errors()[0]
    refused = (err.get("ctx") or {}).get("error")
    if isinstance(refused, InputRefused):
        return refused.field, refused.reason
    parts = [str(p) if isinstance(p, int) else safe_name(str(p)) or "?" for p in err["loc"]]
    return ".".join(parts) or "(command)", err["msg"]
