"""Which projection keys an event can change. Evaluated on the state before and after the event;
the union of both is rewritten, so a key that stops matching is cleared too."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain import events as ev
from domain.state import TenantState
from domain.visibility import links
from projections.rows import all_keys, threads_of_record

# Events that can change who is active, who manages whom, global levels or which addresses are
# internal: their effect reaches any record or thread of the tenant.
TENANT_WIDE = (ev.UserAdded, ev.UserManagerChanged, ev.UserDeactivated, ev.UserReactivated,
               ev.UserDeleted, ev.GlobalVisibilitySet, ev.MailboxConnected,
               ev.MailboxAddressChanged)
MAIL = (ev.MessageSynced, ev.EmailSent, ev.MessageUpdated, ev.MessageDeletedAtProvider,
        ev.MailboxDeletionsConfirmed)
MAILBOX_ONLY = (ev.MailboxDisconnected, ev.MailboxReconnected, ev.MailboxReportedGone,
                ev.CredentialsRemoved, ev.MessageSkipped, ev.AttachmentRejected,
                ev.MessageDeletionHeld)


@dataclass
class Touched:
    everything: bool = False
    records: set[str] = field(default_factory=set)
    threads: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    mailboxes: set[str] = field(default_factory=set)

    def keys(self, state: TenantState, projection: str) -> set[str]:
        if self.everything:
            return set(all_keys(state, projection))
        if projection == "directory":
            return {f"user:{u}" for u in self.users} | {f"record:{r}" for r in self.records}
        if projection == "timeline":
            return set(self.records)
        if projection == "mailbox":
            return set(self.users)
        if projection in ("thread", "explain"):
            return set(self.threads)
        return set(self.mailboxes)


def _event_records(state: TenantState, e: ev.DomainEvent) -> set[str]:
    if isinstance(e, ev.DealContactLinked | ev.DealContactUnlinked):
        return {e.deal, e.contact}
    record = getattr(e, "record", None)
    return {record} if isinstance(record, str) else set()


def touched(state: TenantState, e: ev.DomainEvent) -> Touched:
    """The keys `e` may change, judged on `state` (call before and after evolving)."""
    t = Touched()
    if isinstance(e, TENANT_WIDE):
        t.everything = True
        return t
    mailbox = getattr(e, "mailbox", None)
    if isinstance(mailbox, str):
        t.mailboxes.add(mailbox)
        if isinstance(e, MAILBOX_ONLY):
            return t
    if isinstance(e, MAIL):
        thread = getattr(e, "thread", None)
        if isinstance(thread, str):
            t.threads.add(thread)
        ids = e.ids if isinstance(e, ev.MailboxDeletionsConfirmed) else [getattr(e, "id", None)]
        for mid in ids:
            msg = state.messages.get((str(mailbox), str(mid)))
            if msg is not None:
                t.threads.add(msg.thread)
    elif isinstance(e, ev.ThreadLinked | ev.ThreadUnlinked):
        t.threads.add(e.thread)
        t.records.add(e.record)
    elif isinstance(e, ev.ThreadMarked):
        t.threads.update(e.threads)
    else:
        records = _event_records(state, e)
        for rid in list(records):
            records |= state.deals_of_contact.get(rid, set())
        t.records |= records
        for rid in records:
            t.threads |= threads_of_record(state, rid)
    for tid in t.threads:
        thread = state.threads.get(tid)
        if thread is not None:
            t.records |= set(links(state, thread))
            t.users.add(state.thread_owner(thread))
    if isinstance(e, ev.RecordOwnerChanged | ev.ContactCreated | ev.LeadCreated | ev.DealCreated):
        t.users.add(e.owner)
    return t
