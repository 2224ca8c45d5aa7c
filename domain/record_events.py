"""Events of the tenant, its users, CRM records and visibility (SPEC §2, §3, V1-V6)."""

from __future__ import annotations

from typing import Any, Literal

from domain.event_base import (
    AddressSetting,
    CustomerStatus,
    DomainEvent,
    Level,
    RecordType,
    Role,
    Stage,
)

__all__ = [
    "AddressSettingChanged", "CollaboratorAdded", "CollaboratorRemoved", "ContactCreated",
    "ContactUpdated", "DealContactLinked", "DealContactUnlinked", "DealCreated",
    "DealStageChanged", "GlobalVisibilitySet", "LeadCreated", "RecordOwnerChanged",
    "TenantConfigured", "ThreadLinked", "ThreadMarked", "ThreadUnlinked", "TokensRevoked",
    "UserAdded", "UserContentErased", "UserDeactivated", "UserDeleted", "UserManagerChanged",
    "UserReactivated",
]


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


EVENTS: tuple[type[DomainEvent], ...] = (
    TenantConfigured, UserAdded, UserManagerChanged, UserDeactivated, UserReactivated,
    UserDeleted, TokensRevoked, UserContentErased, GlobalVisibilitySet, LeadCreated,
    ContactCreated, ContactUpdated, DealCreated, DealStageChanged, DealContactLinked,
    DealContactUnlinked, RecordOwnerChanged, CollaboratorAdded, CollaboratorRemoved, ThreadLinked,
    ThreadUnlinked, AddressSettingChanged, ThreadMarked,
)
