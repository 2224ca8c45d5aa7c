"""Tenant state: the fold of a tenant's events (pure). Both the command side and projections use it.

`evolve(state, event, seq)` applies one event; `seq` is the event's position in the tenant's
stream, used to name the event that decided a rule (SPEC V11).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from domain import contact_state
from domain import events as ev
from domain.message_table import Message, MessageTable

DEFAULT_ALLOWED_TYPES = ("jpg", "jpeg", "png", "mp4", "mpeg", "zip", "rar", "pdf", "doc", "docx",
                         "txt")


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


@dataclass(slots=True)
class Thread:
    id: str
    mailbox: str
    created_seq: int
    messages: list[str] = field(default_factory=list)  # provider message ids, in arrival order
    flag: tuple[bool, EventRef] | None = None  # V1: (shared?, event)
    manual: dict[str, tuple[bool, EventRef]] | None = None  # record -> linked? (None: none)
    crm_initiated: bool = False
    # the distinct addresses of its live messages (a tuple: a dict of counts per thread cost
    # ~110 bytes more for each of hundreds of thousands of threads; deletions recount)
    participants: tuple[str, ...] = ()


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
    threads: dict[str, Thread] = field(default_factory=dict)
    messages: MessageTable = field(default_factory=MessageTable)
    rfc_index: dict[tuple[str, str], str] = field(default_factory=dict)  # (mailbox, rfc) -> thread
    # S13 (amended): ids referenced by synced messages but never synced themselves -> the thread
    # of the first message that referenced them (jwz's empty containers). Kept apart from
    # `rfc_index` because the outbox and S7 must only ever match messages that exist.
    missing_parents: dict[tuple[str, str], str] = field(default_factory=dict)
    address_records: dict[str, set[str]] = field(default_factory=dict)  # lead/contact addresses
    # participant -> threads; built on first use (`threads_with`), then kept up to date
    address_threads: dict[str, set[str]] | None = None
    deals_of_contact: dict[str, set[str]] = field(default_factory=dict)
    manual_threads: dict[str, set[str]] = field(default_factory=dict)  # record -> threads
    mailbox_threads: dict[str, list[str]] = field(default_factory=dict)
    user_addresses: set[str] = field(default_factory=set)
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

    # -- helpers used by rules ------------------------------------------------------------
    def thread_owner(self, thread: Thread) -> str:
        return self.mailboxes[thread.mailbox].user

    def live_messages(self, thread: Thread) -> list[Message]:
        msgs = (self.messages[(thread.mailbox, m)] for m in thread.messages)
        return [m for m in msgs if not m.deleted]

    def threads_with(self, address: str) -> set[str]:
        """Threads that have (or had) `address` among their participants. The index is built
        from the threads on first use: the command side and a rebuild never need it."""
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


def _ref(event: ev.DomainEvent, seq: int) -> EventRef:
    return EventRef(seq, type(event).__name__, event.occurred_at, event.actor)


def _index_record(s: TenantState, rec: Record, add: bool) -> None:
    if rec.type == "deal":
        for c in rec.contacts:
            deals = s.deals_of_contact.setdefault(c, set())
            (deals.add if add else deals.discard)(rec.id)
        return
    for a in rec.emails:
        recs = s.address_records.setdefault(a, set())
        (recs.add if add else recs.discard)(rec.id)


def _lower(addresses: list[str]) -> list[str]:
    return sorted({a.lower() for a in addresses})


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


def _addresses(addresses: list[str]) -> tuple[str, ...]:
    return tuple(sorted({sys.intern(a.lower()) for a in addresses}))


# --- per-event folds ------------------------------------------------------------------------


def _tenant_configured(s: TenantState, e: ev.TenantConfigured, seq: int) -> None:
    for key, given in e.settings.items():
        value = given
        if key == "allowed_attachment_types":
            value = tuple(v.lower().lstrip(".") for v in given)
        elif key == "bcc_address" and given is not None:
            value = given.lower()
        setattr(s.settings, key, value)


def _user_added(s: TenantState, e: ev.UserAdded, seq: int) -> None:
    s.users[e.user] = User(e.user, e.email.lower(), e.role, e.manager)
    s.user_addresses.add(e.email.lower())


def _manager_changed(s: TenantState, e: ev.UserManagerChanged, seq: int) -> None:
    s.users[e.user].manager = e.manager


def _status(status: str) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        s.users[e.user].status = status

    return fold


def _level_set(s: TenantState, e: ev.GlobalVisibilitySet, seq: int) -> None:
    s.users[e.user].levels[e.record_type] = (e.level, _ref(e, seq))


def _mailbox_connected(s: TenantState, e: ev.MailboxConnected, seq: int) -> None:
    s.mailboxes[e.mailbox] = Mailbox(e.mailbox, e.user, e.provider, e.address.lower(), e.scope,
                                     e.backfill_days, credentials_set=e.credentials_set,
                                     address_since=seq)
    s.user_addresses.add(e.address.lower())


def _mailbox_address_changed(s: TenantState, e: ev.MailboxAddressChanged, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.address = e.address.lower()
    mbx.address_since = seq
    s.user_addresses.add(mbx.address)


def _mailbox_scope_changed(s: TenantState, e: ev.MailboxScopeChanged, seq: int) -> None:
    s.mailboxes[e.mailbox].scope = e.scope


# `last_error` reasons that name the mailbox's condition (L1, S10, L4), not one message's: they
# are over once the mailbox is reconnected or syncs again (issue #13).
CONDITION_ERRORS = ("user_deactivated", "user_deleted", "mailbox_disconnected", "mailbox_gone")


def _recovered(mbx: Mailbox) -> None:
    if mbx.last_error in CONDITION_ERRORS:
        mbx.last_error = None


def _mailbox_reconnected(s: TenantState, e: ev.MailboxReconnected, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.status = "connected"
    _recovered(mbx)


def _mailbox_status(status: str) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        s.mailboxes[e.mailbox].status = status

    return fold


def _cursor_advanced(s: TenantState, e: ev.MailboxCursorAdvanced, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.cursor = e.cursor
    mbx.cursor_at = e.occurred_at
    _recovered(mbx)  # a sync round completed


def _resync_started(s: TenantState, e: ev.MailboxResyncStarted, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.resync_since = e.since
    mbx.resync_reason = e.reason


def _push_created(s: TenantState, e: ev.PushSubscriptionCreated, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.push = Push(e.subscription_id, e.resource, mbx.address, e.expires_at, e.occurred_at,
                    scope=mbx.scope)


def _push_renewed(s: TenantState, e: ev.PushSubscriptionRenewed, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    if mbx.push is not None:
        mbx.push = replace(mbx.push, expires_at=e.expires_at, renewed_at=e.occurred_at,
                           scope=mbx.scope)  # a renewed Gmail watch takes the scope's labels


def _push_ended(s: TenantState, e: ev.PushSubscriptionEnded, seq: int) -> None:
    s.mailboxes[e.mailbox].push = None


def _credentials_removed(s: TenantState, e: ev.CredentialsRemoved, seq: int) -> None:
    s.mailboxes[e.mailbox].credentials_set = False


def _add_message(s: TenantState, mailbox: str, thread_id: str, msg: ev.MailMessage, seq: int,
                 crm_initiated: bool) -> None:
    thread = s.threads.get(thread_id)
    if thread is None:
        thread = s.threads[thread_id] = Thread(thread_id, mailbox, seq, crm_initiated=crm_initiated)
        s.mailbox_threads.setdefault(mailbox, []).append(thread_id)
    thread.messages.append(msg.id)
    s.mailboxes[mailbox].stored += 1
    message = s.messages[(mailbox, msg.id)] = Message(
        msg.id, thread_id, msg.message_id, _addresses([msg.from_, *msg.to, *msg.cc, *msg.bcc]),
        msg.subject, utc_iso(msg.sent_at), tuple(msg.labels), msg.read, msg.delivery_status)
    if s.index_rfc:
        _index_rfc(s, mailbox, thread_id, msg)
    have = thread.participants
    new = tuple(a for a in message.participants if a not in have)
    if new:
        thread.participants = have + new
    if s.address_threads is not None:
        for a in message.participants:
            s.address_threads.setdefault(a, set()).add(thread_id)


def _index_rfc(s: TenantState, mailbox: str, thread_id: str, msg: ev.MailMessage) -> None:
    """S13: this message's id, and every ancestor it names that was never synced, lead to its
    thread. First come wins (`setdefault`): the fold gives the same index on replay and
    whatever the batch boundaries, and a reference loop cannot move anything."""
    if msg.message_id:
        s.rfc_index.setdefault((mailbox, msg.message_id), thread_id)
        s.missing_parents.pop((mailbox, msg.message_id), None)  # no longer missing
    for rfc in (msg.in_reply_to, *(msg.references or ())):
        if rfc and rfc != msg.message_id and (mailbox, rfc) not in s.rfc_index:
            s.missing_parents.setdefault((mailbox, rfc), thread_id)


def _delete_message(s: TenantState, mailbox: str, message_id: str, recount: bool = True
                    ) -> str | None:
    """Mark the message deleted; returns its thread (None: it was already deleted). The
    thread's participants are recounted unless the caller recounts once for many deletions."""
    msg = s.messages[(mailbox, message_id)]
    if msg.deleted:
        return None
    s.messages[(mailbox, message_id)] = replace(msg, deleted=True)
    s.mailboxes[mailbox].stored -= 1
    if recount:
        _recount(s, s.threads[msg.thread])
    return msg.thread


def _recount(s: TenantState, thread: Thread) -> None:
    seen: dict[str, None] = {}
    for msg in s.live_messages(thread):
        seen.update(dict.fromkeys(msg.participants))
    thread.participants = tuple(seen)


def _message_synced(s: TenantState, e: ev.MessageSynced, seq: int) -> None:
    _add_message(s, e.mailbox, e.thread, e.message, seq, e.crm_initiated)
    mbx = s.mailboxes[e.mailbox]
    mbx.synced += 1
    mbx.last_sync_at = e.occurred_at
    _recovered(mbx)


def _email_sent(s: TenantState, e: ev.EmailSent, seq: int) -> None:
    _add_message(s, e.mailbox, e.thread, e.message, seq, crm_initiated=True)
    s.outbound[e.message.id] = OutboundRequest(e.mailbox, e.message.id, "send", seq)
    s.sent_provider_ids[(e.mailbox, e.message.id)] = None


def _message_updated(s: TenantState, e: ev.MessageUpdated, seq: int) -> None:
    msg = s.messages[(e.mailbox, e.id)]
    s.messages[(e.mailbox, e.id)] = replace(
        msg, labels=msg.labels if e.labels is None else tuple(e.labels),
        read=msg.read if e.read is None else e.read,
        delivery_status=msg.delivery_status if e.delivery_status is None else e.delivery_status)


def _message_deleted(s: TenantState, e: ev.MessageDeletedAtProvider, seq: int) -> None:
    _delete_message(s, e.mailbox, e.id)


def _deletion_held(s: TenantState, e: ev.MessageDeletionHeld, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.pending_deletions.append(e.id)
    mbx.last_error = e.reason


def _deletions_confirmed(s: TenantState, e: ev.MailboxDeletionsConfirmed, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    if e.applied:
        threads = {_delete_message(s, e.mailbox, mid, recount=False) for mid in e.ids}
        for tid in sorted(t for t in threads if t is not None):
            _recount(s, s.threads[tid])
    mbx.pending_deletions = []
    if mbx.last_error is not None and mbx.last_error.startswith(("mass_delete_guard:",
                                                                 "mailbox_suspect:")):
        mbx.last_error = None  # the operator decided (L5): nothing is held any more


def _skipped(s: TenantState, e: ev.MessageSkipped | ev.DeliverySkipped, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.skipped += 1
    mbx.last_error = e.reason


def _command_rejected(s: TenantState, e: ev.CommandRejected, seq: int) -> None:
    """A rejected command of a mailbox (a sync batch's message, cursor...) counts in its sync
    status, so a rejection is never silent beside a cursor that moved on."""
    mbx = s.mailboxes.get(e.mailbox_id) if e.mailbox_id is not None else None
    if mbx is not None:
        mbx.rejected += 1
        mbx.last_error = f"{e.cmd}: {e.field}: {e.reason}"


def _delivery_dead_lettered(s: TenantState, e: ev.DeliveryDeadLettered, seq: int) -> None:
    """A delivery given up after its retries is a rejected delivery of its mailbox."""
    mbx = s.mailboxes.get(e.mailbox_id) if e.mailbox_id is not None else None
    if mbx is not None:
        mbx.rejected += 1
        mbx.last_error = f"dead letter: {e.error}"


def _attachment_rejected(s: TenantState, e: ev.AttachmentRejected, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.rejected += 1
    mbx.last_error = e.reason


def _lead_created(s: TenantState, e: ev.LeadCreated, seq: int) -> None:
    rec = Record(e.record, "lead", e.owner, e.name, _lower(e.emails), owner_ref=_ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _contact_created(s: TenantState, e: ev.ContactCreated, seq: int) -> None:
    rec = Record(e.record, "contact", e.owner, e.name, _lower(e.emails), kind=e.kind,
                 customer_status=e.customer_status, owner_ref=_ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _contact_updated(s: TenantState, e: ev.ContactUpdated, seq: int) -> None:
    rec = s.records[e.record]
    _index_record(s, rec, False)
    for key, value in e.fields.items():
        if key == "emails":
            rec.emails = _lower(value)
        elif key == "name":
            rec.name = value
        elif key == "customer_status":
            rec.customer_status = value
        else:
            rec.fields[key] = value
    _index_record(s, rec, True)


def _deal_created(s: TenantState, e: ev.DealCreated, seq: int) -> None:
    rec = Record(e.record, "deal", e.owner, e.name, contacts=list(dict.fromkeys(e.contacts)),
                 stage=e.stage, owner_ref=_ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _deal_stage(s: TenantState, e: ev.DealStageChanged, seq: int) -> None:
    s.records[e.record].stage = e.stage


def _deal_contact_linked(s: TenantState, e: ev.DealContactLinked, seq: int) -> None:
    s.records[e.deal].contacts.append(e.contact)
    s.deals_of_contact.setdefault(e.contact, set()).add(e.deal)


def _deal_contact_unlinked(s: TenantState, e: ev.DealContactUnlinked, seq: int) -> None:
    s.records[e.deal].contacts.remove(e.contact)
    s.deals_of_contact.get(e.contact, set()).discard(e.deal)


def _owner_changed(s: TenantState, e: ev.RecordOwnerChanged, seq: int) -> None:
    rec = s.records[e.record]
    rec.owner = e.owner
    rec.owner_ref = _ref(e, seq)


def _collaborator(add: bool) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        collaborators = s.records[e.record].collaborators
        (collaborators.add if add else collaborators.discard)(e.user)

    return fold


def _thread_link(linked: bool) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        thread = s.threads[e.thread]
        if thread.manual is None:
            thread.manual = {}
        thread.manual[e.record] = (linked, _ref(e, seq))
        s.manual_threads.setdefault(e.record, set()).add(e.thread)

    return fold


def _address_setting(s: TenantState, e: ev.AddressSettingChanged, seq: int) -> None:
    s.records[e.record].settings[(e.user, e.address.lower())] = (e.setting, _ref(e, seq))


def _thread_marked(s: TenantState, e: ev.ThreadMarked, seq: int) -> None:
    for t in e.threads:
        s.threads[t].flag = (e.shared, _ref(e, seq))


def _deletion_requested(s: TenantState, e: ev.MessageDeletionRequested, seq: int) -> None:
    _delete_message(s, e.mailbox, e.id)
    s.crm_deleted.add((e.mailbox, e.id))
    s.outbound[e.request] = OutboundRequest(e.mailbox, e.id, "delete", seq)


def _read_requested(s: TenantState, e: ev.MessageReadRequested, seq: int) -> None:
    key = (e.mailbox, e.id)
    s.messages[key] = replace(s.messages[key], read=e.read)
    s.outbound[e.request] = OutboundRequest(e.mailbox, e.id, "read", seq, e.read)


def _provider_ids(s: TenantState, mailbox: str, local: str, provider_id: str | None,
                  provider_thread_id: str | None) -> None:
    if provider_id is not None:
        s.sent_provider_ids[(mailbox, local)] = provider_id
        s.local_ids[(mailbox, provider_id)] = local
    if provider_thread_id is not None:
        s.thread_aliases[f"{mailbox}:{provider_thread_id}"] = s.messages[(mailbox, local)].thread


def _outbound_acknowledged(s: TenantState, e: ev.OutboundMailAcknowledged, seq: int) -> None:
    s.outbound.pop(e.request, None)
    if e.operation == "send":
        key = (e.mailbox, e.id)
        s.messages[key] = replace(s.messages[key], delivery_status="sent" if e.ok else "failed")
        _provider_ids(s, e.mailbox, e.id, e.provider_id, e.provider_thread_id)
    mbx = s.mailboxes[e.mailbox]
    if not e.ok:
        mbx.last_error = f"outbox: {e.error}"
    elif mbx.last_error is not None and mbx.last_error.startswith("outbox: "):
        mbx.last_error = None  # the outbox reaches the provider again


def _copy_matched(s: TenantState, e: ev.OutboundCopyMatched, seq: int) -> None:
    _provider_ids(s, e.mailbox, e.id, e.provider_id, e.provider_thread_id)
    msg = s.messages[(e.mailbox, e.id)]
    s.messages[(e.mailbox, e.id)] = replace(
        msg,  # the provider has it: it was sent
        delivery_status="sent" if msg.delivery_status == "queued" else msg.delivery_status,
        labels=tuple(e.labels) if e.labels else msg.labels,
        read=msg.read if e.read is None else e.read)


def _tokens_revoked(s: TenantState, e: ev.TokensRevoked, seq: int) -> None:
    s.users[e.user].tokens_revoked_at = e.occurred_at


def _content_erased(s: TenantState, e: ev.UserContentErased, seq: int) -> None:
    """L2: the state forgets the erased user's subjects too, so no later snapshot holds them."""
    for mbx in [m for m in s.mailboxes.values() if m.user == e.user]:
        for thread_id in s.mailbox_threads.get(mbx.id, []):
            for message_id in s.threads[thread_id].messages:
                msg = s.messages[(mbx.id, message_id)]
                if msg.subject != ev.ERASED:
                    s.messages[(mbx.id, message_id)] = replace(msg, subject=ev.ERASED)


def _no_state(s: TenantState, e: Any, seq: int) -> None:
    """Audit-only events (rejections, recorded contact-sync commands)."""


FOLDS: dict[type[ev.DomainEvent], Callable[[TenantState, Any, int], None]] = {
    ev.TenantConfigured: _tenant_configured,
    ev.UserAdded: _user_added,
    ev.UserManagerChanged: _manager_changed,
    ev.UserDeactivated: _status("deactivated"),
    ev.UserReactivated: _status("active"),
    ev.UserDeleted: _status("deleted"),
    ev.TokensRevoked: _tokens_revoked,
    ev.UserContentErased: _content_erased,
    ev.GlobalVisibilitySet: _level_set,
    ev.MailboxConnected: _mailbox_connected,
    ev.MailboxAddressChanged: _mailbox_address_changed,
    ev.MailboxDisconnected: _mailbox_status("disconnected"),
    ev.MailboxReconnected: _mailbox_reconnected,
    ev.MailboxScopeChanged: _mailbox_scope_changed,
    ev.MailboxReportedGone: _mailbox_status("gone"),
    ev.CredentialsRemoved: _credentials_removed,
    ev.MailboxCursorAdvanced: _cursor_advanced,
    ev.DeliverySkipped: _skipped,
    ev.MailboxResyncStarted: _resync_started,
    ev.MessageSynced: _message_synced,
    ev.EmailSent: _email_sent,
    ev.MessageUpdated: _message_updated,
    ev.MessageDeletedAtProvider: _message_deleted,
    ev.MessageDeletionHeld: _deletion_held,
    ev.MailboxDeletionsConfirmed: _deletions_confirmed,
    ev.MessageSkipped: _skipped,
    ev.AttachmentRejected: _attachment_rejected,
    ev.LeadCreated: _lead_created,
    ev.ContactCreated: _contact_created,
    ev.ContactUpdated: _contact_updated,
    ev.DealCreated: _deal_created,
    ev.DealStageChanged: _deal_stage,
    ev.DealContactLinked: _deal_contact_linked,
    ev.DealContactUnlinked: _deal_contact_unlinked,
    ev.RecordOwnerChanged: _owner_changed,
    ev.CollaboratorAdded: _collaborator(True),
    ev.CollaboratorRemoved: _collaborator(False),
    ev.ThreadLinked: _thread_link(True),
    ev.ThreadUnlinked: _thread_link(False),
    ev.AddressSettingChanged: _address_setting,
    ev.ThreadMarked: _thread_marked,
    ev.CommandRejected: _command_rejected,
    ev.CommandHadNoEffect: _no_state,
    ev.ContactSyncCommandRecorded: _no_state,
    ev.ExternalContactChangeQueued: _no_state,
    ev.ExternalContactChangeAcknowledged: _no_state,
    ev.MessageDeletionRequested: _deletion_requested,
    ev.MessageReadRequested: _read_requested,
    ev.OutboundMailAcknowledged: _outbound_acknowledged,
    ev.OutboundCopyMatched: _copy_matched,
    ev.DeliveryDeadLettered: _delivery_dead_lettered,
    ev.DeadLetterReplayed: _no_state,
    ev.PushSubscriptionCreated: _push_created,
    ev.PushSubscriptionRenewed: _push_renewed,
    ev.PushSubscriptionEnded: _push_ended,
}


def _then(first: Callable[[TenantState, Any, int], None],
          second: Callable[[TenantState, Any, int], None]
          ) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        first(s, e, seq)
        second(s, e, seq)

    return fold


# contact sync and merge (SPEC §5): its own events, and provenance of contact values (C8)
FOLDS.update(contact_state.FOLDS)
for _kind, _after in contact_state.AFTER.items():
    FOLDS[_kind] = _then(FOLDS[_kind], _after)
assert set(FOLDS) == set(ev.EVENT_TYPES), "every event type needs a fold"


def evolve(state: TenantState, event: ev.DomainEvent, seq: int) -> TenantState:
    """Apply one event in place and return the state. `seq` must be state.seq + 1."""
    FOLDS[type(event)](state, event, seq)
    state.seq = seq
    state.last_at = event.occurred_at
    if event.command_id is not None:
        state.applied_commands.add((event.actor, event.command_id))
    return state
