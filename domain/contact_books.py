"""Contact sync's outbound side (SPEC §5, C2, C4, C6): which users' books must hold a record,
the queue of changes one command produces (`Outbound`), and the CRM changes that reach the books
(`following` wraps the CRM handlers). The decisions on contact-sync commands are
`domain.contacts`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from domain import events as ev
from domain.contact_state import (
    Claim,
    ContactSync,
    Known,
    categories_of,
    iso,
    payload,
    resolve,
)
from domain.context import Context
from domain.state import Record, TenantState

Handler = Callable[[Context, Any], list[ev.DomainEvent]]


# --- the outbound queue ----------------------------------------------------------------------


class Outbound:
    """Collects the changes one command queues; `known` overrides what the command's own
    events will change in `ContactSync.known` before they are folded."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cs: ContactSync = ctx.state.contacts
        self.count = self.cs.changes
        self.events: list[ev.DomainEvent] = []
        self.known: dict[tuple[str, str], Known | None] = {}
        self.links: dict[tuple[str, str], str | None] = {}  # (user, record) -> external id
        self.active: dict[str, bool] = {}  # users whose status the command changes
        self.settled: set[tuple[str, str]] = set()  # (user, record) whose creation is acked

    def _known(self, user: str, record: str) -> Known | None:
        key = (user, record)
        return self.known[key] if key in self.known else self.cs.known.get(key)

    def _link(self, user: str, record: str) -> str | None:
        if (user, record) in self.links:
            return self.links[(user, record)]
        link = self.cs.active_link(user, record)
        return link.external_id if link else None

    def queue(self, user: str, operation: str, **fields: Any) -> None:
        self.count += 1
        self.events.append(self.ctx.event(ev.ExternalContactChangeQueued,
                                          change_id=f"xc-{self.count}", user=user,
                                          operation=operation, **fields))

    def push(self, user: str, record: str, fields: dict[str, Any],
             categories: tuple[str, ...]) -> None:
        """Queue an upsert unless the user's book already holds exactly this (C4)."""
        key = (user, record)
        if key in self.cs.deleted or (key in self.cs.creating and key not in self.settled):
            return  # C5: deleted in the book; or being created: the ack sends what is missing
        known = self._known(user, record)
        if known is not None and known.fields == fields and known.categories == categories:
            return
        self.queue(user, "upsert", record=record, external_id=self._link(user, record),
                   fields=fields, categories=list(categories))
        self.known[key] = Known(fields, categories)

    def remove(self, user: str, record: str) -> None:
        """C6: the user lost access to `record`; take it out of their book (if it is there)."""
        external_id = self._link(user, record)
        if external_id is None and self._known(user, record) is None:
            return
        self.queue(user, "remove", record=record, external_id=external_id)
        self.known[(user, record)] = None


# --- who gets what -------------------------------------------------------------------------


def _chain(s: TenantState, user: str, manager_of: dict[str, str | None] | None = None
           ) -> list[str]:
    over = manager_of or {}
    out: list[str] = []
    seen = {user}

    def up(u: str) -> str | None:
        if u in over:
            return over[u]
        return s.users[u].manager if u in s.users else None

    current = up(user)
    while current is not None and current not in seen and current in s.users:
        out.append(current)
        seen.add(current)
        current = up(current)
    return out


def book_users(s: TenantState, owner: str, collaborators: Iterable[str],
               manager_of: dict[str, str | None] | None = None,
               connected: Iterable[str] | None = None,
               active: dict[str, bool] | None = None) -> set[str]:
    """C6: the connected, active users in access(R) for a record with this owner and these
    collaborators (manager changes given by `manager_of`, status changes by `active`)."""
    users = s.contacts.connected if connected is None else connected
    if not users:
        return set()
    around = {owner, *collaborators, *_chain(s, owner, manager_of)}
    status = active or {}
    return {u for u in users if u in s.users and status.get(u, s.users[u].active)
            and (u in around or s.users[u].role == "admin")}


def syncable(s: TenantState, record: Record) -> bool:
    """Leads and contacts go to external books (C2 `Base Lead`); merged-away contacts do not."""
    return record.type in ("lead", "contact") and record.id not in s.contacts.merged_into


def current_payload(s: TenantState, record: Record) -> dict[str, Any]:
    if record.type == "lead":
        return {"emails": list(record.emails), "name": record.name}
    return payload(s.contacts.current.get(record.id, {}))


def push_record(out: Outbound, record: Record, users: Iterable[str],
                 fields: dict[str, Any] | None = None,
                 categories: tuple[str, ...] | None = None) -> None:
    s = out.ctx.state
    fields = current_payload(s, record) if fields is None else fields
    cats = categories_of(s, record) if categories is None else categories
    for user in sorted(users):
        out.push(user, record.id, fields, cats)


def full_push(out: Outbound, user: str) -> None:
    """Everything `user` may access, into their book (a new connection, a reactivation)."""
    s = out.ctx.state
    for record in s.records.values():
        if syncable(s, record) and book_users(s, record.owner, record.collaborators,
                                              connected=[user], active=out.active):
            push_record(out, record, [user])


# --- CRM changes that reach the books (C2, C6) ---------------------------------------------


def _access_change(out: Outbound, record: Record, owner: str, collaborators: Iterable[str],
                   manager_of: dict[str, str | None] | None = None) -> None:
    s = out.ctx.state
    if not syncable(s, record):
        return
    before = book_users(s, record.owner, record.collaborators, active=out.active)
    after = book_users(s, owner, collaborators, manager_of, active=out.active)
    push_record(out, record, after - before)
    for user in sorted(before - after):
        out.remove(user, record.id)


def _deal_contacts_changed(out: Outbound, contacts: dict[str, set[str]],
                           stages: dict[str, str]) -> None:
    """C2: categories of the given contacts with their deals (`contacts`) and deal stages."""
    s = out.ctx.state
    cs = s.contacts
    for contact_id, deals in sorted(contacts.items()):
        root = s.records[cs.root(contact_id)]
        all_deals = set(deals)
        for r in cs.subtree(root.id):
            if r != contact_id:
                all_deals |= s.deals_of_contact.get(r, set())
        cats = categories_of(s, root, stages=stages, deals=all_deals)
        push_record(out, root, book_users(s, root.owner, root.collaborators), categories=cats)


def _outbound(ctx: Context, e: ev.DomainEvent, out: Outbound) -> None:
    s = ctx.state
    cs = s.contacts
    if isinstance(e, ev.ContactCreated | ev.LeadCreated):
        kind = "contact" if isinstance(e, ev.ContactCreated) else "lead"
        rec = Record(e.record, kind, e.owner, e.name, sorted({a.lower() for a in e.emails}),
                     kind=getattr(e, "kind", None),
                     customer_status=getattr(e, "customer_status", "none"))
        if kind == "lead":
            fields = {"emails": rec.emails, "name": rec.name}
        else:
            fields = payload(resolve([Claim("name", rec.name, "crm", "", 0, rec.id),
                                      Claim("emails", rec.emails, "crm", "", 0, rec.id)])[0])
        cats = categories_of(s, rec, deals=set())
        for user in sorted(book_users(s, e.owner, ())):
            out.push(user, e.record, fields, cats)
    elif isinstance(e, ev.ContactUpdated):
        rec = s.records[e.record]
        new = [Claim(f, v, f"crm:{rec.id}", iso(e.occurred_at), s.seq + 1, rec.id)
               for f, v in e.fields.items()]
        current, _ = resolve([*cs.all_claims(rec.id), *new])
        status = current["customer_status"].value if "customer_status" in current else None
        push_record(out, rec, book_users(s, rec.owner, rec.collaborators), payload(current),
                     categories_of(s, rec, status=status))
    elif isinstance(e, ev.RecordOwnerChanged):
        rec = s.records[e.record]
        _access_change(out, rec, e.owner, rec.collaborators)
    elif isinstance(e, ev.CollaboratorAdded | ev.CollaboratorRemoved):
        rec = s.records[e.record]
        collaborators = set(rec.collaborators)
        (collaborators.add if isinstance(e, ev.CollaboratorAdded) else collaborators.discard)(
            e.user)
        _access_change(out, rec, rec.owner, collaborators)
    elif isinstance(e, ev.UserManagerChanged):
        _manager_changed(out, e)
    elif isinstance(e, ev.UserReactivated) and e.user in cs.connected:
        out.active[e.user] = True
        full_push(out, e.user)
    elif isinstance(e, ev.DealCreated):
        _deal_contacts_changed(
            out, {ct: s.deals_of_contact.get(ct, set()) | {e.record} for ct in e.contacts},
            {e.record: e.stage})
    elif isinstance(e, ev.DealStageChanged):
        deal = s.records[e.record]
        _deal_contacts_changed(
            out, {ct: s.deals_of_contact.get(ct, set()) for ct in deal.contacts},
            {e.record: e.stage})
    elif isinstance(e, ev.DealContactLinked):
        _deal_contacts_changed(out, {e.contact: s.deals_of_contact.get(e.contact, set())
                                     | {e.deal}}, {})
    elif isinstance(e, ev.DealContactUnlinked):
        _deal_contacts_changed(out, {e.contact: s.deals_of_contact.get(e.contact, set())
                                     - {e.deal}}, {})


def _manager_changed(out: Outbound, e: ev.UserManagerChanged) -> None:
    """Only the connected users whose place above `e.user` changes can gain or lose records, and
    only records owned by `e.user` or someone below: one pass over the records."""
    s = out.ctx.state
    before = set(_chain(s, e.user))
    after = set(_chain(s, e.user, {e.user: e.manager}))
    moving = {u for u in before ^ after if u in s.contacts.connected}
    if not moving:
        return
    below = {u for u in s.users if u == e.user or e.user in _chain(s, u)}
    for record in s.records.values():
        if record.owner in below and syncable(s, record):
            was = book_users(s, record.owner, record.collaborators, connected=moving)
            now = book_users(s, record.owner, record.collaborators, {e.user: e.manager},
                             connected=moving)
            push_record(out, record, now - was)
            for user in sorted(was - now):
                out.remove(user, record.id)


def following(handler: Handler) -> Handler:
    """A CRM command whose events may change what users' books must hold: their changes follow
    the events. Free when nobody connected contact sync."""

    def decide(ctx: Context, cmd: Any) -> list[ev.DomainEvent]:
        record = getattr(cmd, "record", None)
        if cmd.cmd == "UpdateContact" and record in ctx.state.contacts.merged_into:
            raise ctx.reject("record", f"contact {record!r} is merged into "
                                       f"{ctx.state.contacts.root(record)!r}; update that one")
        events = handler(ctx, cmd)
        if not ctx.state.contacts.connected or not events:
            return events
        out = Outbound(ctx)
        if cmd.cmd == "DeleteUser":  # a deleted user's book gets nothing more
            out.active[cmd.user] = False
        for e in events:
            _outbound(ctx, e, out)
        return events + out.events

    return decide


FOLLOWED = ("CreateLead", "CreateContact", "UpdateContact", "CreateDeal", "ChangeDealStage",
            "LinkDealContact", "UnlinkDealContact", "ChangeOwner", "AddCollaborator",
            "RemoveCollaborator", "ChangeUserManager", "ReactivateUser", "DeleteUser",
            "SyncMessage")  # SyncMessage: Smart BCC creates contacts (S6)
