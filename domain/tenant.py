"""The tenant's state: settings, users, records, mailboxes, threads, messages and the indexes the
rules read. Its fold (`evolve`) is `domain.state`, by area in `domain.record_folds` and
`domain.mail_folds`; both the command side and projections use it (pure)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, TypeVar

from domain import contact_state
from domain import events as ev
from domain.message_table import Message, MessageTable, RfcIndex
from domain.thread_table import MailboxThreads, Thread, ThreadTable

C = TypeVar("C", bound=type)


def pickled_by_fields(cls: C) -> C:
    """Pickle instances as a call of the class with their fields: a slots dataclass unpickles
    through a `__setstate__` in Python that looks its fields up for every object (the 1M
    tenant's 50,000 records took a snapshot a quarter of a second to restore)."""
    names = [f.name for f in fields(cls)]
    assert len(names) > 1, "attrgetter of one name answers its value, not a tuple"
    values: Callable[[Any], tuple[Any, ...]] = attrgetter(*names)

    def reduce(self: Any) -> tuple[C, tuple[Any, ...]]:
        return cls, values(self)

    setattr(cls, "__reduce__", reduce)  # noqa: B010  (a method set on the made class)
    return cls


DEFAULT_ALLOWED_TYPES = ("jpg", "jpeg", "png", "mp4", "mpeg", "zip", "rar", "pdf", "doc", "docx",
                         "txt")


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class EventRef:
    """Names the event that set a piece of state, for explanations (V11)."""

    seq: int
    type: str
    occurred_at: datetime
    actor: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "occurred_at": self.occurred_at.isoformat(),
                "actor": self.actor}


@dataclass
class TenantSettings:
    bcc_address: str | None = None
    sending_domain: str | None = None
    attachment_policy: str = "drop_attachment"
    attachment_max_bytes: int = 3 * 1024 * 1024
    allowed_attachment_types: tuple[str, ...] = DEFAULT_ALLOWED_TYPES
    mass_delete_threshold: float = 0.5


@pickled_by_fields
@dataclass(slots=True)
class User:
    id: str
    email: str
    role: str
    manager: str | None
    status: str = "active"
    levels: dict[str, tuple[str, EventRef]] = field(default_factory=dict)
    tokens_revoked_at: datetime | None = None  # RevokeTokens: tokens issued up to then refused

    @property
    def active(self) -> bool:
        return self.status == "active"


@pickled_by_fields
@dataclass(slots=True)
class Record:
    id: str
    type: str  # lead | contact | deal
    owner: str
    name: str
    emails: list[str] = field(default_factory=list)  # lowercased; deals: empty (see contacts)
    contacts: list[str] = field(default_factory=list)  # deals only
    collaborators: set[str] = field(default_factory=set)
    kind: str | None = None
    stage: str | None = None
    customer_status: str = "none"
    fields: dict[str, Any] = field(default_factory=dict)
    # (user, address) -> (shared | unshared | default, event)
    settings: dict[tuple[str, str], tuple[str, EventRef]] = field(default_factory=dict)
    owner_ref: EventRef | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Push:
    """The mailbox's push channel at the provider (Graph subscription / Gmail watch), as the sync
    workers recorded it; `address` is the mailbox address it was made for."""

    subscription_id: str | None
    resource: str
    address: str
    expires_at: datetime
    created_at: datetime
    renewed_at: datetime | None = None
    scope: dict[str, Any] | None = None  # the mailbox's S1 scope when made or renewed

    @property
    def issued_at(self) -> datetime:
        """When its current lifetime began (created or last renewed)."""
        return self.renewed_at or self.created_at


@pickled_by_fields
@dataclass(slots=True)
class Mailbox:
    id: str
    user: str
    provider: str
    address: str
    scope: dict[str, Any]
    backfill_days: int
    status: str = "connected"  # connected | disconnected | gone
    credentials_set: bool = False
    pending_deletions: list[str] = field(default_factory=list)
    address_since: int = 0  # seq of the last address change (S9)
    stored: int = 0  # live (not deleted) messages held for this mailbox, for the L5 guard
    synced: int = 0
    skipped: int = 0
    rejected: int = 0
    last_error: str | None = None
    last_sync_at: datetime | None = None
    cursor: str | None = None
    cursor_at: datetime | None = None
    resync_since: datetime | None = None  # the window of the last resync (S2, L3)
    resync_reason: str | None = None
    push: Push | None = None

    @property
    def suspect(self) -> bool:
        return bool(self.pending_deletions)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A CRM-side change the outbox has not yet had acknowledged (S7, S12)."""

    mailbox: str
    id: str  # the message (crm-N for a send)
    operation: str  # send | delete | read
    seq: int  # the requesting event's position in the tenant's stream (the outbox reads it)
    read: bool | None = None


@dataclass
class TenantState:
    tenant: str
    seq: int = 0
    last_at: datetime | None = None
    settings: TenantSettings = field(default_factory=TenantSettings)
    users: dict[str, User] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    messages: MessageTable = field(default_factory=MessageTable)
    threads: ThreadTable = field(init=False)  # over `messages` (their rows chain threads)
    # S13 (amended): ids referenced by synced messages but never synced themselves -> the thread
    # of the first message that referenced them (jwz's empty containers). Kept apart from
    # `rfc_index` because the outbox and S7 must only ever match messages that exist.
    missing_parents: dict[tuple[str, str], str] = field(default_factory=dict)
    address_records: dict[str, set[str]] = field(default_factory=dict)  # lead/contact addresses
    # participant -> threads; built on first use (`threads_with`), then kept up to date
    address_threads: dict[str, set[str]] | None = None
    deals_of_contact: dict[str, set[str]] = field(default_factory=dict)
    manual_threads: dict[str, set[str]] = field(default_factory=dict)  # record -> threads
    user_addresses: set[str] = field(default_factory=set)
    # mailbox -> (its user, its address): S1's own addresses of a user without reading every
    # mailbox (a state whose mailboxes are folded when first touched holds them all)
    mailbox_addresses: dict[str, tuple[str, str]] = field(default_factory=dict)
    # E5: (actor, command_id) of every command applied; a key belongs to the principal (actor)
    # that sent it, so one principal's key never turns another's command into a no-op
    applied_commands: set[tuple[str, str]] = field(default_factory=set)
    # outbox (S7, S12): pending requests by id; CRM-sent messages -> provider id (None until
    # known) and back; provider thread ids of CRM threads; messages the owner deleted in the CRM
    outbound: dict[str, OutboundRequest] = field(default_factory=dict)
    sent_provider_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    local_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    thread_aliases: dict[str, str] = field(default_factory=dict)
    crm_deleted: set[tuple[str, str]] = field(default_factory=set)
    contacts: contact_state.ContactSync = field(default_factory=contact_state.ContactSync)
    # the command side threads replies by Message-ID; projections never need that index
    index_rfc: bool = True
    # messages' participants, subjects and times, and threads' participants: what projections
    # read (visibility, rows); no rule reads them, so the command side keeps none (issue #15:
    # its fold and memory; L2: no subject in a command process or its snapshot)
    message_content: bool = True

    def __post_init__(self) -> None:
        self.threads = ThreadTable(self.messages)

    @property
    def mailbox_threads(self) -> MailboxThreads:
        """mailbox -> its threads' ids in creation order."""
        return MailboxThreads(self.threads)

    @property
    def rfc_index(self) -> RfcIndex:
        """(mailbox, rfc) -> thread: the messages' own index (kept when `index_rfc`)."""
        return RfcIndex(self.messages)

    # -- helpers used by rules ------------------------------------------------------------
    def thread_owner(self, thread: Thread) -> str:
        return self.mailboxes[thread.mailbox].user

    def live_messages(self, thread: Thread) -> list[Message]:
        if not self.message_content:
            raise ValueError("live_messages: this state keeps no message content")
        return [m for m in thread.stored() if not m.deleted]

    def threads_with(self, address: str) -> set[str]:
        """Threads that have (or had) `address` among their participants. The index is built
        from the threads on first use: the command side and a rebuild never need it."""
        if not self.message_content:
            raise ValueError("threads_with: this state keeps no participants")
        if self.address_threads is None:
            index: dict[str, set[str]] = {}
            for thread in self.threads.values():
                for a in thread.participants:
                    index.setdefault(a, set()).add(thread.id)
            self.address_threads = index
        return self.address_threads.get(address, set())

    def record_addresses(self, record: Record) -> set[str]:
        if record.type == "deal":
            out: set[str] = set()
            for c in record.contacts:
                if c in self.records:
                    out.update(self.records[c].emails)
            return out
        return set(record.emails)


def ref(event: ev.DomainEvent, seq: int) -> EventRef:
    return EventRef(seq, type(event).__name__, event.occurred_at, event.actor)


_LAST_ISO: list[tuple[datetime | None, str]] = [(None, "")]


def utc_iso(moment: datetime) -> str:
    """The moment in UTC, ISO-8601 (`+00:00`); such strings sort chronologically. The last
    answer is kept: a message's time is asked for twice in a row (its state, then its row)."""
    last = _LAST_ISO[0]  # one tuple, read and replaced whole: safe between threads
    if last[0] is moment:
        return last[1]
    text = moment.astimezone(UTC).isoformat()
    _LAST_ISO[0] = (moment, text)
    return text


def addresses(addresses: list[str]) -> tuple[str, ...]:
    return tuple(sorted({sys.intern(a.lower()) for a in addresses}))
