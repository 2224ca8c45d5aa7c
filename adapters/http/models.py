"""Response models of the HTTP API: the answers of SPEC §7 as a declared schema (/openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Capabilities(_Model):
    view: bool
    delivery_status: bool
    read_status: bool
    reply: bool
    forward: bool


class ThreadSummary(_Model):
    """A thread on a record timeline or the mailbox page."""

    thread: str
    subject: str | None = Field(description="null when erased (L2)")
    owner: str
    erased: bool | None = Field(default=None, description="true when the content is erased "
                                                          "(L2); absent otherwise")
    mailbox: str
    messages: int = Field(description="messages counted (each RFC message once, V8)")
    last_activity: str = Field(description="ISO-8601 time of the newest counted message")
    shared: bool = Field(description="the padlock (V11)")
    capabilities: Capabilities


class AttachmentInfo(_Model):
    name: str | None = Field(description="null once erased (L2)")
    size: int
    content_type: str
    refused: bool | None = Field(default=None, description="S8 refused it (absent otherwise)")
    reason: str | None = Field(default=None, description="why S8 refused it")


class Message(_Model):
    id: str
    message_id: str | None = Field(default=None, description="the RFC 5322 Message-ID")
    from_: str = Field(alias="from")
    to: list[str]
    cc: list[str]
    subject: str | None = Field(description="null when erased (L2)")
    body: str | None = Field(description="null when erased (L2)")
    erased: bool | None = Field(default=None, description="true when the content is erased "
                                                          "(L2); absent otherwise")
    sent_at: str
    delivery_status: str | None
    attachments: list[AttachmentInfo] = []
    read: bool | None = Field(default=None, description="only for the thread's owner (V10): "
                                                        "absent, not null, for anyone else")


class ThreadAnswer(_Model):
    thread: str
    owner: str
    mailbox: str
    shared: bool
    capabilities: Capabilities
    messages: list[Message]


class EventRef(_Model):
    seq: int
    type: str
    occurred_at: str
    actor: str


class RuleStep(_Model):
    model_config = ConfigDict(extra="allow")
    rule: str
    outcome: bool
    detail: str
    record: str | None = None
    event: EventRef | None = None


class Explanation(_Model):
    thread: str
    viewer: str
    record: str | None
    visible: bool
    rules: list[RuleStep]


class RecordSummary(_Model):
    record: str
    type: str
    name: str
    owner: str
    emails: list[str]


class SyncStatus(_Model):
    mailbox: str
    user: str
    provider: str
    address: str
    status: str
    suspect: bool
    held_deletions: list[str]
    synced: int
    skipped: int
    rejected: int
    last_error: str | None
    last_sync_at: str | None
    credentials_set: bool
    scope: dict[str, Any]
    cursor: str | None
    cursor_at: str | None
    resync_since: str | None
    resync_reason: str | None
    push: dict[str, Any] | None = Field(
        default=None, description="the mailbox's push channel (Graph subscription id or Gmail "
        "watch: resource, expires_at, created_at, renewed_at); null when there is none")


class ContactValue(_Model):
    """One value of a contact field with its provenance (C8)."""

    value: Any
    source: Literal["crm", "exchange"]
    modified_at: str
    record: str = Field(description="the contact the value was set on (merges keep it)")
    user: str | None = Field(default=None, description="exchange: whose book")
    external_id: str | None = None


class KeptValue(ContactValue):
    field: str = Field(description="the field whose older value this custom field keeps")


class ExternalLink(_Model):
    provider: str
    external_id: str
    user: str
    status: Literal["active", "detached"]
    reason: str | None
    home: str
    modified_at: str | None


class ContactMerge(_Model):
    """Contact merge state (SPEC §7, C8-C10)."""

    record: str
    survivor: str
    merged: list[str]
    links: list[ExternalLink]
    fields: dict[str, ContactValue]
    kept: dict[str, KeptValue] = Field(description="older values as custom fields "
                                                   "`<field> (previous)`, numbered if taken")
    values: dict[str, list[ContactValue]] = Field(description="every value ever seen")


class MergedAway(_Model):
    merged_into: str


class LineResult(_Model):
    line: int
    result: Literal["applied", "unchanged", "rejected"]
    cmd: str | None = None
    field: str | None = None
    reason: str | None = None
    warnings: list[str] | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="what an applied command's caller should know (e.g. a "
        "reactivated user's mailbox that is gone, L4); absent when there is nothing")


class CommandsAnswer(_Model):
    applied: int
    unchanged: int
    rejected: int
    results: list[LineResult]
    position: int = Field(description="your tenant's position after applying (its event "
                                      "count; it says nothing of other tenants); pass it as "
                                      "min_position to read your writes")


class ErrorAnswer(_Model):
    detail: str


class FieldError(_Model):
    field: str
    reason: str


class InvalidAnswer(_Model):
    detail: str
    errors: list[FieldError]
