"""Contact sync and merge (SPEC §5): the decisions about CRM contacts and users' external
address books.

Inbound (C1, C5, C7, C8): SyncExternalContact imports or updates a CRM contact, matched by email
(C7); field conflicts are settled by modification time with the older value kept (C8, derived in
`domain.contact_state`). DeleteExternalContact is recorded, never applied (C5).

Outbound (C2, C3, C4, C6): whenever what a user's book should hold for a record differs from
what it is known to hold, an `ExternalContactChangeQueued` goes out. The book is known from what
was written to it and what it reported (`ContactSync.known`), so a value that came from the book
is not sent back to it (C4) unless the CRM's value won the conflict. Only users who connected
contact sync get changes, for the leads and contacts in access(R) (C6, managers and admins
included). The contact-sync runner executes the changes and answers each with
AcknowledgeExternalContactChange, recorded as `ExternalContactChangeAcknowledged`.

Merge (C9, C10): MergeContacts keeps one external link per user on the survivor (its own, else
the most recently modified) and detaches the others; UnmergeContact restores the merged contact's
links and values.

Who gets what, and the CRM changes that reach the books: `domain.contact_books`.
"""

from __future__ import annotations

from typing import Any

from domain import commands as c
from domain import events as ev
from domain.contact_books import (
    FOLLOWED,
    Handler,
    Outbound,
    book_users,
    following,
    full_push,
    push_record,
    syncable,
)
from domain.contact_state import (
    BASE_CATEGORIES,
    CRM_ONLY,
    Claim,
    Known,
    categories_of,
    iso,
    payload,
    resolve,
)
from domain.context import Context
from domain.records import _emails
from domain.state import TenantState

# --- C1: connecting -------------------------------------------------------------------------


def connect(ctx: Context, cmd: c.ConnectContactSync) -> list[ev.DomainEvent]:
    ctx.user(cmd.user, active=True)
    categories = list(dict.fromkeys(cmd.categories))
    for i, name in enumerate(categories):
        if not name.strip():
            raise ctx.reject(f"categories.{i}", "a category needs a name")
    already = ctx.state.contacts.connected.get(cmd.user)
    if already == categories:
        return []
    events: list[ev.DomainEvent] = [ctx.event(ev.ContactSyncConnected, user=cmd.user,
                                              categories=categories)]
    if already is None:
        out = Outbound(ctx)
        full_push(out, cmd.user)
        events += out.events
    return events


def _connected(ctx: Context, user: str) -> list[str]:
    ctx.user(user, active=True)
    categories = ctx.state.contacts.connected.get(user)
    if categories is None:
        raise ctx.reject("user", f"{user!r} has not connected contact sync (ConnectContactSync)")
    return categories


# --- C1, C7, C8: external contacts coming in -----------------------------------------------


def _external_fields(ctx: Context, fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for name in sorted(out):
        if name in CRM_ONLY:
            raise ctx.reject(f"fields.{name}", "is CRM state (expressed by the Base categories, "
                                               "C2); it does not come from an external book")
        if not name.strip():
            raise ctx.reject("fields", "a field needs a name")
    if "name" in out and not isinstance(out["name"], str):
        raise ctx.reject("fields.name", "must be a string")
    if "emails" in out:
        out["emails"] = _emails(ctx, out["emails"], "fields.emails")
    return out


def _match(s: TenantState, user: str, emails: list[str]) -> str | None:
    """C7: the contact (lowest id) with one of the addresses that `user` may access and that is
    not yet linked for `user`."""
    cs = s.contacts
    found: set[str] = set()
    for address in emails:
        for rid in s.address_records.get(address, ()):
            rec = s.records[rid]
            if rec.type != "contact" or rid in cs.merged_into:
                continue
            if cs.active_link(user, rid) is not None:
                continue
            if book_users(s, rec.owner, rec.collaborators, connected=[user]):
                found.add(rid)
    return min(found) if found else None


def _new_record_id(s: TenantState, user: str, external_id: str) -> str:
    base = f"ext:{user}:{external_id}"
    rid, n = base, 2
    while rid in s.records:
        rid, n = f"{base}#{n}", n + 1
    return rid


def sync_external(ctx: Context, cmd: c.SyncExternalContact) -> list[ev.DomainEvent]:
    s = ctx.state
    cs = s.contacts
    imported = _connected(ctx, cmd.user)
    if cmd.folder != "private":
        raise ctx.reject("folder", f"only private folders sync (C1): a contact in a "
                                   f"{cmd.folder} folder is not imported")
    fields = _external_fields(ctx, cmd.fields)
    link = cs.links.get((cmd.user, cmd.external_id))
    events: list[ev.DomainEvent] = []
    created = matched = False
    if link is not None and link.status != "active":
        raise ctx.reject("external_id", f"external contact {cmd.external_id!r} is detached from "
                                        f"contact {link.record!r} ({link.reason}); it no "
                                        "longer syncs")
    if link is not None:
        record_id = link.record
    else:
        wanted = set(imported) | set(BASE_CATEGORIES)
        if not wanted & set(cmd.categories):
            raise ctx.reject("categories", f"none of {sorted(cmd.categories)} is a category "
                                           f"{cmd.user!r} imports ({sorted(imported)}) or a "
                                           "Base category")
        found = _match(s, cmd.user, fields.get("emails", []))
        if found is not None:
            record_id, matched = found, True
        else:
            record_id, created = _new_record_id(s, cmd.user, cmd.external_id), True
            name = fields.get("name") or (fields.get("emails") or [cmd.external_id])[0]
            kind = "company" if "Base Company" in cmd.categories else "person"
            events.append(ctx.event(ev.ContactCreated, record=record_id, owner=cmd.user,
                                    name=name, kind=kind, emails=fields.get("emails", []),
                                    via="contact_sync"))
    events.append(ctx.event(ev.ExternalContactSynced, user=cmd.user,
                            external_id=cmd.external_id, record=record_id, fields=fields,
                            categories=list(cmd.categories), modified_at=cmd.modified_at,
                            created=created, matched=matched))
    # C4/C6: what the books hold now; the sender's book holds what it just reported
    origin = f"exchange:{cmd.user}:{cmd.external_id}"
    new = [Claim(f, v, origin, iso(cmd.modified_at), s.seq + len(events), record_id)
           for f, v in fields.items()]
    out = Outbound(ctx)
    before = None if created else cs.known.get((cmd.user, record_id))
    out.known[(cmd.user, record_id)] = Known(
        {**(before.fields if before else {}), **fields},
        tuple(x for x in BASE_CATEGORIES if x in cmd.categories))
    if created:
        out.links[(cmd.user, record_id)] = cmd.external_id
        current, _ = resolve(new)
        kind = "Base Company" if "Base Company" in cmd.categories else "Base Person"
        cats: tuple[str, ...] = (kind,)
        users = book_users(s, cmd.user, ())
    else:
        record = s.records[record_id]
        current, _ = resolve([*cs.all_claims(record_id), *new])
        cats = categories_of(s, record)
        users = book_users(s, record.owner, record.collaborators)
        if matched:
            out.links[(cmd.user, record_id)] = cmd.external_id
    for user in sorted(users | {cmd.user}):
        out.push(user, record_id, payload(current), cats)
    return events + out.events


# --- C5, C3 ---------------------------------------------------------------------------------


def delete_external(ctx: Context, cmd: c.DeleteExternalContact) -> list[ev.DomainEvent]:
    """C5: recorded, not applied: the CRM contact stays; the link is detached."""
    _connected(ctx, cmd.user)
    link = ctx.state.contacts.links.get((cmd.user, cmd.external_id))
    if link is None:
        raise ctx.reject("external_id", f"unknown external contact {cmd.external_id!r} in "
                                        f"{cmd.user!r}'s book")
    if link.reason == "deleted_externally":
        return []
    return [ctx.event(ev.ExternalContactDeleted, user=cmd.user, external_id=cmd.external_id,
                      record=link.record)]


def rename_category(ctx: Context, cmd: c.RenameExternalCategory) -> list[ev.DomainEvent]:
    """C3: a Base category is renamed back (an outbound change); a renamed imported category
    is imported under its new name."""
    imported = _connected(ctx, cmd.user)
    if cmd.old == cmd.new:
        return []
    base = cmd.old in BASE_CATEGORIES
    if not base and cmd.old not in imported:
        raise ctx.reject("old", f"unknown category {cmd.old!r}: neither a Base category nor "
                                f"one {cmd.user!r} imports ({sorted(imported)})")
    events: list[ev.DomainEvent] = [ctx.event(ev.ExternalCategoryRenamed, user=cmd.user,
                                              old=cmd.old, new=cmd.new, base=base)]
    if base:
        out = Outbound(ctx)
        out.queue(cmd.user, "revert_category_rename", category_old=cmd.new,
                  category_new=cmd.old)
        events += out.events
    return events


# --- C9, C10 --------------------------------------------------------------------------------


def merge(ctx: Context, cmd: c.MergeContacts) -> list[ev.DomainEvent]:
    s = ctx.state
    cs = s.contacts
    survivor = ctx.record(cmd.survivor, "survivor", type_="contact")
    if survivor.id in cs.merged_into:
        raise ctx.reject("survivor", f"contact {survivor.id!r} is merged into "
                                     f"{cs.root(survivor.id)!r}")
    merged: list[str] = []
    for i, rid in enumerate(cmd.merged):
        field = f"merged.{i}"
        if rid == cmd.survivor:
            raise ctx.reject(field, "a contact cannot be merged into itself")
        ctx.record(rid, field, type_="contact")
        if rid in cs.merged_into:
            raise ctx.reject(field, f"contact {rid!r} is already merged into "
                                    f"{cs.root(rid)!r}")
        if rid in merged:
            raise ctx.reject(field, f"contact {rid!r} is named twice")
        merged.append(rid)
    # C9, per user's book: the survivor's own link, else the most recently modified one
    moved: list[list[str]] = []
    detached: list[list[str]] = []
    users = sorted({k[0] for r in [survivor.id, *merged] for k in cs.by_record.get(r, ())})
    out = Outbound(ctx)
    for user in users:
        own = cs.active_link(user, survivor.id)
        theirs = [link for r in merged
                  for link in [cs.links[k] for k in sorted(cs.by_record.get(r, ()))]
                  if link.user == user and link.status == "active"]
        theirs.sort(key=lambda link: (link.modified_at, link.external_id), reverse=True)
        if own is None and theirs:
            keep = theirs.pop(0)
            moved.append([user, keep.external_id, keep.record])
            out.links[(user, survivor.id)] = keep.external_id
            out.known[(user, survivor.id)] = cs.known.get((user, keep.record))
        detached += [[user, link.external_id] for link in theirs]
    events: list[ev.DomainEvent] = [ctx.event(ev.ContactsMerged, survivor=survivor.id,
                                              merged=merged, moved=moved, detached=detached)]
    claims = [cl for r in [survivor.id, *merged] for cl in cs.all_claims(r)]
    current, _ = resolve(claims)
    deals: set[str] = set()
    for r in [survivor.id, *merged]:
        for sub in cs.subtree(r):
            deals |= s.deals_of_contact.get(sub, set())
    status = current["customer_status"].value if "customer_status" in current else None
    cats = categories_of(s, survivor, status=status, deals=deals)
    push_record(out, survivor, book_users(s, survivor.owner, survivor.collaborators),
                 payload(current), cats)
    return events + out.events


def unmerge(ctx: Context, cmd: c.UnmergeContact) -> list[ev.DomainEvent]:
    s = ctx.state
    cs = s.contacts
    record = ctx.record(cmd.record, type_="contact")
    if record.id not in cs.merged_into:
        raise ctx.reject("record", f"contact {record.id!r} is not merged into another contact; "
                                   "there is nothing to unmerge")
    survivor = s.records[cs.merged_into[record.id]]
    restored = sorted([list(k) for k, link in cs.links.items()
                       if link.merged_from and link.merged_from[-1] == record.id])
    out = Outbound(ctx)
    for user, external_id in restored:
        link = cs.links[(user, external_id)]
        out.links[(user, record.id)] = external_id
        if link.status == "active":  # it moved to the survivor and comes back
            out.links[(user, survivor.id)] = None
            out.known[(user, record.id)] = cs.known.get((user, survivor.id))
            out.known[(user, survivor.id)] = None
    events: list[ev.DomainEvent] = [ctx.event(ev.ContactUnmerged, record=record.id,
                                              survivor=survivor.id, restored=restored)]
    gone = set(cs.subtree(record.id))
    rest = [r for r in cs.subtree(survivor.id) if r not in gone]
    for target, parts in ((survivor, rest), (record, sorted(gone))):
        current, _ = resolve([cl for r in parts for cl in cs.claims.get(r, ())])
        deals: set[str] = set()
        for r in parts:
            deals |= s.deals_of_contact.get(r, set())
        status = current["customer_status"].value if "customer_status" in current else None
        cats = categories_of(s, target, status=status, deals=deals)
        push_record(out, target, book_users(s, target.owner, target.collaborators),
                     payload(current), cats)
    return events + out.events


# --- acknowledgements -----------------------------------------------------------------------


def acknowledge_change(ctx: Context, cmd: c.AcknowledgeExternalContactChange
                       ) -> list[ev.DomainEvent]:
    """An ack with `external_id` for a created contact links that external contact to the
    record for that user; what changed meanwhile (held back while it was being created) is
    sent to it at once, as one upsert of the current state (C4). If the record was linked
    meanwhile (C7 matched the user's own copy), left the user's access or was merged away,
    the created contact is removed again."""
    ctx.user(cmd.user)
    if not cmd.ok and not cmd.error:
        raise ctx.reject("error", "a refused change needs the provider's reason")
    events: list[ev.DomainEvent] = [
        ctx.event(ev.ExternalContactChangeAcknowledged, change_id=cmd.change_id, user=cmd.user,
                  external_id=cmd.external_id, ok=cmd.ok, error=cmd.error)]
    s = ctx.state
    key = s.contacts.pending.get(cmd.change_id)
    if key is None or key[0] != cmd.user or not cmd.ok or cmd.external_id is None:
        return events
    user, record_id = key
    out = Outbound(ctx)
    out.settled.add(key)  # the creation ends with this ack: what changed meanwhile goes now (C4)
    record = s.records.get(record_id)
    in_book = record is not None and syncable(s, record) and bool(book_users(
        s, record.owner, record.collaborators, connected=[user], active={user: True}))
    paused = not s.users[user].active  # L1: a deactivated user's book waits for reactivation
    if s.contacts.active_link(user, record_id) is not None:
        # C7 matched an external contact to the record while this one was being created: the
        # created one is a duplicate of the engine's own making; it leaves the book again, and
        # the matched one gets what was held back
        out.queue(user, "remove", record=record_id, external_id=cmd.external_id)
    else:
        out.links[key] = cmd.external_id
        if not in_book:
            # access lost (C6) or merged away (C9) while it was being created: the CRM's copy
            # leaves the book again
            out.queue(user, "remove", record=record_id, external_id=cmd.external_id)
            return events + out.events
    if record is not None and in_book and not paused:
        push_record(out, record, [user])
    return events + out.events


def handlers(existing: dict[str, Handler]) -> dict[str, Handler]:
    """The contact-sync handlers, and the CRM handlers wrapped by `following`."""
    return {
        "ConnectContactSync": connect,
        "SyncExternalContact": sync_external,
        "DeleteExternalContact": delete_external,
        "RenameExternalCategory": rename_category,
        "MergeContacts": merge,
        "UnmergeContact": unmerge,
        **{name: following(existing[name]) for name in FOLLOWED},
    }
