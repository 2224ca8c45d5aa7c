"""Events of contact sync and merge (SPEC §5; rules in domain/contacts.py): external books,
the changes queued for them and their acknowledgements, merges."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from domain.event_base import DomainEvent

__all__ = [
    "ContactSyncConnected", "ContactUnmerged", "ContactsMerged", "ExternalCategoryRenamed",
    "ExternalContactChangeAcknowledged", "ExternalContactChangeQueued", "ExternalContactDeleted",
    "ExternalContactSynced",
]


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


EVENTS: tuple[type[DomainEvent], ...] = (
    ExternalContactChangeQueued, ExternalContactChangeAcknowledged, ContactSyncConnected,
    ExternalContactSynced, ExternalContactDeleted, ExternalCategoryRenamed, ContactsMerged,
    ContactUnmerged,
)
