"""Which projection keys an event can change, judged on one state (the projector asks before and
after the event and rewrites the union, so a key that stops matching is cleared too).

Fan-out is bounded by what really changes: an owner, collaborator, stage, status or global-level
change rewrites one row (queries combine it with each thread's stored basis); only events that
change links or stored bases (addresses, shares, flags, mail) touch threads, and then only the
threads involved.
"""

from __future__ import annotations

from collections.abc import Iterable

from domain import events as ev
from domain.state import TenantState
from domain.visibility import links
from projections.rows import SEP

Keys = dict[str, set[str]]

MAIL = (ev.MessageSynced, ev.EmailSent, ev.MessageUpdated, ev.MessageDeletedAtProvider,
        ev.MailboxDeletionsConfirmed, ev.MessageDeletionRequested, ev.MessageReadRequested,
        ev.OutboundMailAcknowledged, ev.OutboundCopyMatched)
RECORD_ONLY = (ev.RecordOwnerChanged, ev.CollaboratorAdded, ev.CollaboratorRemoved,
               ev.DealStageChanged)
USER_ONLY = (ev.UserDeactivated, ev.UserReactivated, ev.GlobalVisibilitySet)


def _threads_with(state: TenantState, addresses: Iterable[str]) -> set[str]:
    if not state.threads:  # none yet: the participant index (built on first use) can wait
        return set()
    out: set[str] = set()
    for address in addresses:
        out |= state.threads_with(address)
    return out


def _record_threads(state: TenantState, record_id: str) -> set[str]:
    """Threads that may be linked to the record: by one of its addresses, or manually."""
    record = state.records.get(record_id)
    if record is None:
        return set()
    return (_threads_with(state, state.record_addresses(record))
            | state.manual_threads.get(record_id, set()))


def _contact_changes(state: TenantState, e: ev.DomainEvent) -> tuple[set[str], set[str]]:
    """SPEC §5: the records whose values (name, addresses, fields) an event may change beyond
    ContactCreated/ContactUpdated, and the `contact` rows it may change."""
    cs = state.contacts
    values: set[str] = set()
    rows: set[str] = set()
    if isinstance(e, ev.ContactCreated | ev.ContactUpdated | ev.ExternalContactSynced):
        values = {e.record}
    elif isinstance(e, ev.ContactsMerged):
        values = {e.survivor, *e.merged}
    elif isinstance(e, ev.ContactUnmerged):
        values = {e.record, e.survivor}
    elif isinstance(e, ev.ExternalContactDeleted | ev.ExternalContactChangeQueued):
        rows = {e.record} if e.record and getattr(e, "operation", "remove") == "remove" else set()
    elif isinstance(e, ev.ExternalContactChangeAcknowledged) and e.change_id in cs.pending:
        rows = {cs.pending[e.change_id][1]}
    for found in (values, rows):  # a contact's values and links show in every contact it is
        for r in list(found):     # merged into
            up = r
            while up in cs.merged_into:
                up = cs.merged_into[up]
                found.add(up)
    if isinstance(e, ev.ContactCreated | ev.ContactUpdated):
        return set(), values | rows
    return values, values | rows


def _event_threads(state: TenantState, e: ev.DomainEvent) -> set[str]:
    if isinstance(e, MAIL):
        threads = {e.thread} if isinstance(e, ev.MessageSynced | ev.EmailSent) else set()
        ids = e.ids if isinstance(e, ev.MailboxDeletionsConfirmed) else (
            [] if isinstance(e, ev.MessageSynced | ev.EmailSent) else [e.id])
        for mid in ids:
            msg = state.messages.get((e.mailbox, mid))
            if msg is not None:
                threads.add(msg.thread)
        return threads
    if isinstance(e, ev.ThreadLinked | ev.ThreadUnlinked):
        return {e.thread}
    if isinstance(e, ev.ThreadMarked):
        return set(e.threads)
    if isinstance(e, ev.AddressSettingChanged):
        return _threads_with(state, [e.address])
    if isinstance(e, ev.UserAdded):
        return _threads_with(state, [e.email])
    if isinstance(e, ev.MailboxConnected | ev.MailboxAddressChanged):
        return _threads_with(state, [e.address])
    if isinstance(e, ev.UserDeleted):
        return {t for m in state.mailboxes.values() if m.user == e.user
                for t in state.mailbox_threads.get(m.id, [])}
    if isinstance(e, ev.LeadCreated | ev.ContactCreated | ev.DealCreated | ev.ContactUpdated):
        return _record_threads(state, e.record)
    if isinstance(e, ev.DealContactLinked | ev.DealContactUnlinked):
        return _record_threads(state, e.contact)
    changed, _ = _contact_changes(state, e)
    return set().union(*(_record_threads(state, r) for r in changed))


def _event_records(state: TenantState, e: ev.DomainEvent) -> set[str]:
    """Record rows of the directory: the record, and deals whose addresses follow a contact."""
    if isinstance(e, ev.DealContactLinked | ev.DealContactUnlinked):
        return {e.deal}
    if isinstance(e, (*RECORD_ONLY, ev.LeadCreated, ev.ContactCreated, ev.DealCreated)):
        return {e.record}
    if isinstance(e, ev.ContactUpdated):
        return {e.record} | state.deals_of_contact.get(e.record, set())
    changed, _ = _contact_changes(state, e)
    return changed.union(*(state.deals_of_contact.get(r, set()) for r in changed))


def touched(state: TenantState, e: ev.DomainEvent) -> tuple[Keys, set[str]]:
    """The directory and sync-status keys `e` may change, and the threads whose rows it may
    change, judged on `state`."""
    kind = type(e)
    if kind is ev.MessageSynced:  # most events: one mailbox's counters and one thread
        return {"sync_status": {e.mailbox}}, {e.thread}  # type: ignore[attr-defined]
    if kind is ev.EmailSent:
        return {}, {e.thread}  # type: ignore[attr-defined]
    keys: Keys = {}
    if isinstance(e, ev.UserManagerChanged):
        keys["directory"] = {f"user:{u}" for u in state.users}  # chains below the user change
    elif isinstance(e, (*USER_ONLY, ev.UserAdded, ev.UserDeleted)):
        keys["directory"] = {f"user:{e.user}"}
    if isinstance(e, ev.UserDeleted):  # L2: their mailboxes' last errors are erased
        keys["sync_status"] = {m.id for m in state.mailboxes.values() if m.user == e.user}
    records = _event_records(state, e)
    if records:
        keys.setdefault("directory", set()).update(f"record:{r}" for r in records)
    if "mailbox" in type(e).model_fields and not isinstance(e, ev.EmailSent):
        keys["sync_status"] = {e.mailbox}  # type: ignore[attr-defined]
    elif isinstance(e, ev.CommandRejected | ev.DeliveryDeadLettered) and \
            e.mailbox_id in state.mailboxes:  # counted in the mailbox's sync status
        keys["sync_status"] = {e.mailbox_id}
    contact_rows = _contact_changes(state, e)[1]
    if contact_rows:
        keys["contact"] = contact_rows
    return keys, _event_threads(state, e)


def thread_keys(state: TenantState, thread_id: str) -> Keys:
    """Every key of the thread-derived projections that belongs to a thread now."""
    thread = state.threads.get(thread_id)
    if thread is None:
        return {}
    return keys_of_thread(thread_id, state.thread_owner(thread), links(state, thread))


def keys_of_thread(thread_id: str, owner: str, linked: Iterable[str]) -> Keys:
    """The thread-derived keys of a thread owned by `owner` and linked to `linked` (from
    `thread_facts` when they are at hand: its links are computed once)."""
    return {"timeline": {f"{r}{SEP}{thread_id}" for r in linked},
            "mailbox": {f"{owner}{SEP}{thread_id}"}, "thread": {thread_id},
            "explain": {thread_id}}


# The projections `state_keys` and `keys_of_thread` know the keys of: a new state-derived
# projection must be added there, or a rebuild would leave it empty (checked at import).
GROUPED = frozenset({"directory", "sync_status", "contact", "timeline", "mailbox", "thread",
                     "explain"})


def state_keys(state: TenantState) -> Keys:
    """Every key of the projections not derived from threads that may have rows now."""
    return {
        "directory": {f"user:{u}" for u in state.users} | {f"record:{r}" for r in state.records},
        "sync_status": set(state.mailboxes),
        "contact": {r for r, record in state.records.items() if record.type == "contact"},
    }
