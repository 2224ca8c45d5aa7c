"""What every domain event shares (SPEC E1, E2): the envelope (`DomainEvent`), the mail message
events carry, and the vocabularies (roles, levels, stages...). The events themselves are in the
area modules, read together as `domain.events`.

Every event carries the envelope fields of E2 (tenant, actor, occurred_at, correlation_id) and the
`command_id` of the command that caused it, so idempotency (E5) is a pure function of the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERASED",
    "AddressSetting",
    "Attachment",
    "CustomerStatus",
    "DomainEvent",
    "Level",
    "MailMessage",
    "Provider",
    "RecordType",
    "Role",
    "Stage",
]

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
    # defer_build: validators built at first use (a CLI query decodes few or no events)
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    tenant: str
    actor: str
    occurred_at: datetime
    correlation_id: str
    command_id: str | None = None
