"""Commands of the tenant, its users, CRM records, visibility and contact sync (SPEC §2, §3,
§5, §6)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from domain.command_envelope import Command
from domain.events import (
    CustomerStatus,
    Level,
    RecordType,
    Role,
    Stage,
)
from domain.input_rules import cleaned

__all__ = [
    "AcknowledgeExternalContactChange", "AddCollaborator", "AddUser", "ChangeDealStage",
    "ChangeOwner", "ChangeUserManager", "ConfigureTenant", "ConnectContactSync", "CreateContact",
    "CreateDeal", "CreateLead", "DeactivateUser", "DeleteExternalContact", "DeleteUser",
    "LinkDealContact", "LinkThread", "MarkThreadPrivate", "MarkThreadShared", "MergeContacts",
    "ReactivateUser", "RemoveCollaborator", "RenameExternalCategory", "RevokeTokens",
    "SetGlobalVisibility", "ShareAddress", "SyncExternalContact", "UnlinkDealContact",
    "UnlinkThread", "UnmergeContact", "UnshareAddress", "UpdateContact",
]


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


COMMANDS: tuple[type[Command], ...] = (
    AddUser, ChangeUserManager, DeactivateUser, ReactivateUser, DeleteUser, RevokeTokens,
    ConfigureTenant, CreateLead, CreateContact, UpdateContact, CreateDeal, ChangeDealStage,
    LinkDealContact, UnlinkDealContact, ChangeOwner, AddCollaborator, RemoveCollaborator,
    LinkThread, UnlinkThread, SetGlobalVisibility, ShareAddress, UnshareAddress, MarkThreadShared,
    MarkThreadPrivate, ConnectContactSync, SyncExternalContact, DeleteExternalContact,
    RenameExternalCategory, MergeContacts, UnmergeContact, AcknowledgeExternalContactChange,
)
