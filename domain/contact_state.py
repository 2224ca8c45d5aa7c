"""Contact-sync and merge state (SPEC §5): the part of the tenant state that C1-C10 need, and its
fold. Pure: no I/O.

Field values are kept as *claims*: one value of one field from one origin (`crm:<record>` for
values set in the CRM on a contact, `exchange:<user>:<external id>` for values an external
contact brought in) with its modification time. A contact's current values and the older values
it keeps (C8) are derived from the claims of the contact and of every contact merged into it, so
a merge destroys nothing and an unmerge (C10) is a matter of leaving the merged claims out again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from domain import events as ev

if TYPE_CHECKING:
    from domain.state import Record, TenantState

BASE_CATEGORIES = ("Base Person", "Base Company", "Base Lead", "Base Current Prospect",
                   "Base Lost Prospect", "Base Current Customer", "Base Past Customer")
RECORD_FIELDS = ("name", "emails", "customer_status")  # held on the Record itself
CRM_ONLY = frozenset({"customer_status"})  # expressed outside by categories (C2), never a field


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class Claim(NamedTuple):  # a tuple: cheap to build, three per contact created
    field: str
    value: Any
    origin: str  # crm:<record> | exchange:<user>:<external id>
    modified_at: str  # UTC ISO-8601 (sorts chronologically)
    seq: int
    record: str  # the contact the claim was made on

    @property
    def order(self) -> tuple[str, int]:
        return self.modified_at, self.seq

    def as_json(self) -> dict[str, Any]:
        kind, _, rest = self.origin.partition(":")
        out: dict[str, Any] = {"value": self.value, "source": kind, "modified_at": self.modified_at,
                               "record": self.record}
        if kind == "exchange":
            out["user"], _, out["external_id"] = rest.partition(":")
        return out


@dataclass
class Link:
    """One external contact in one user's book, linked to a CRM contact."""

    user: str
    external_id: str
    home: str  # the contact it was linked to first
    record: str  # the contact it syncs with now
    status: str = "active"  # active | detached
    reason: str | None = None  # merged | deleted_externally | access_lost
    modified_at: str = ""  # newest external modification seen through it
    merged_from: list[str] = field(default_factory=list)  # records it left by merges (a stack)

    def as_json(self) -> dict[str, Any]:
        return {"provider": "exchange", "external_id": self.external_id, "user": self.user,
                "status": self.status, "reason": self.reason, "home": self.home,
                "modified_at": self.modified_at or None}


@dataclass(frozen=True)
class Known:
    """What a user's external book holds for a record: what was last written there or read."""

    fields: dict[str, Any]
    categories: tuple[str, ...]


@dataclass
class ContactSync:
    connected: dict[str, list[str]] = field(default_factory=dict)  # user -> imported categories
    claims: dict[str, list[Claim]] = field(default_factory=dict)  # record -> its own claims
    current: dict[str, dict[str, Claim]] = field(default_factory=dict)  # record -> field -> claim
    kept: dict[str, dict[str, Claim]] = field(default_factory=dict)  # record -> custom field
    links: dict[tuple[str, str], Link] = field(default_factory=dict)  # (user, external id)
    by_record: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)  # survivor -> merged (direct)
    known: dict[tuple[str, str], Known] = field(default_factory=dict)  # (user, record)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # change -> (user, record)
    creating: set[tuple[str, str]] = field(default_factory=set)
    deleted: set[tuple[str, str]] = field(default_factory=set)  # (user, record), C5
    changes: int = 0  # changes queued so far (change ids)

    # -- reading ------------------------------------------------------------------------------
    def root(self, record: str) -> str:
        seen = {record}
        while record in self.merged_into:
            record = self.merged_into[record]
            if record in seen:
                break
            seen.add(record)
        return record

    def subtree(self, record: str) -> list[str]:
        out, todo = [], [record]
        while todo:
            r = todo.pop()
            out.append(r)
            todo.extend(self.members.get(r, ()))
        return out

    def all_claims(self, record: str) -> list[Claim]:
        return [c for r in self.subtree(record) for c in self.claims.get(r, ())]

    def active_link(self, user: str, record: str) -> Link | None:
        found = [self.links[k] for k in sorted(self.by_record.get(record, ()))
                 if k[0] == user and self.links[k].status == "active"]
        return found[0] if found else None


def resolve(claims: Iterable[Claim]) -> tuple[dict[str, Claim], dict[str, Claim]]:
    """C8: per field the newest claim wins (modification time, then log order); the latest
    value of every other origin that differs is kept as `<field> (previous)`, numbered if the
    name is taken, oldest first."""
    latest: dict[tuple[str, str], Claim] = {}
    for c in claims:
        key = (c.field, c.origin)
        if key not in latest or c.order > latest[key].order:
            latest[key] = c
    by_field: dict[str, list[Claim]] = {}
    for c in latest.values():
        by_field.setdefault(c.field, []).append(c)
    current: dict[str, Claim] = {}
    losers: list[Claim] = []
    for name, cs in by_field.items():
        cs.sort(key=lambda c: c.order)
        winner = current[name] = cs[-1]
        seen = [winner.value]
        for c in reversed(cs[:-1]):
            if c.value not in seen and c.value is not None:
                seen.append(c.value)
                losers.append(c)
    taken = {f for f, c in current.items() if c.value is not None}
    kept: dict[str, Claim] = {}
    for c in sorted(losers, key=lambda c: (c.field, c.order)):
        name, n = f"{c.field} (previous)", 2
        while name in taken or name in kept:
            name, n = f"{c.field} (previous {n})", n + 1
        kept[name] = c
    return current, kept


def payload(current: dict[str, Claim]) -> dict[str, Any]:
    """The fields written to an external book: current values, CRM-only fields left out (kept
    older values stay on the CRM side, so they cannot come back as fields of their own)."""
    return {f: c.value for f, c in sorted(current.items())
            if f not in CRM_ONLY and c.value is not None}


def categories_of(s: TenantState, record: Record, *, status: str | None = None,
                  stages: dict[str, str] | None = None,
                  deals: set[str] | None = None) -> tuple[str, ...]:
    """C2 from CRM state; `status`, `stages` (deal -> stage) and `deals` (the contact's deals)
    override the state (the command side asks before its events are folded). `Base Current
    Customer`: customer status current, or a won deal unless the status is past."""
    if record.type == "lead":
        return ("Base Lead",)
    out = ["Base Company" if record.kind == "company" else "Base Person"]
    if deals is None:
        deals = set()
        for r in s.contacts.subtree(record.id):
            deals |= s.deals_of_contact.get(r, set())
    found = [(stages or {}).get(d) or s.records[d].stage for d in sorted(deals)
             if d in s.records or d in (stages or {})]
    if "open" in found:
        out.append("Base Current Prospect")
    elif found and all(st in ("lost", "unqualified") for st in found):
        out.append("Base Lost Prospect")
    # Sell 004: current customers are the contacts "with won deals and the status current
    # customer"; a won deal makes one unless the CRM says the customer is past
    # (docs/decisions/contacts.md)
    status = status if status is not None else record.customer_status
    if status == "past":
        out.append("Base Past Customer")
    elif status == "current" or "won" in found:
        out.append("Base Current Customer")
    return tuple(out)


# --- fold ---------------------------------------------------------------------------------------


def _lower(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    return sorted({str(v).lower() for v in values})


def refresh(s: TenantState, record: str) -> None:
    """Derive the current values of `record` and every contact it is merged into, and write them
    to the Record (name, emails, customer status, custom fields), re-indexing its addresses."""
    cs = s.contacts
    while True:
        rec = s.records.get(record)
        if rec is not None and rec.type == "contact":
            current, kept = resolve(cs.all_claims(record))
            cs.current[record] = current
            if kept or record in cs.kept:
                cs.kept[record] = kept
            _write(s, rec, current, kept)
        if record not in cs.merged_into:
            return
        record = cs.merged_into[record]


def _write(s: TenantState, rec: Record, current: dict[str, Claim], kept: dict[str, Claim]
           ) -> None:
    if "name" in current and isinstance(current["name"].value, str):
        rec.name = current["name"].value
    if "customer_status" in current and current["customer_status"].value is not None:
        rec.customer_status = current["customer_status"].value
    emails = _lower(current["emails"].value) if "emails" in current else rec.emails
    if emails != rec.emails:
        for a in rec.emails:
            s.address_records.get(a, set()).discard(rec.id)
        rec.emails = emails
        for a in emails:
            s.address_records.setdefault(a, set()).add(rec.id)
    rec.fields = {f: c.value for f, c in sorted(current.items())
                  if f not in RECORD_FIELDS and c.value is not None}
    rec.fields.update({n: c.value for n, c in kept.items()})


def _claim(s: TenantState, record: str, fields: dict[str, Any], origin: str, modified_at: str,
           seq: int) -> None:
    claims = s.contacts.claims.setdefault(record, [])
    for name, value in fields.items():
        claims.append(Claim(name, value, origin, modified_at, seq, record))


def _set_link_record(cs: ContactSync, link: Link, record: str) -> None:
    key = (link.user, link.external_id)
    cs.by_record.get(link.record, set()).discard(key)
    link.record = record
    cs.by_record.setdefault(record, set()).add(key)


def _contact_created(s: TenantState, e: ev.ContactCreated, seq: int) -> None:
    if e.via == "contact_sync":
        return  # the ExternalContactSynced that follows brings the values and their origin
    at, origin = iso(e.occurred_at), f"crm:{e.record}"
    claims = s.contacts.claims[e.record] = [
        Claim("name", e.name, origin, at, seq, e.record),
        Claim("emails", sorted({a.lower() for a in e.emails}), origin, at, seq, e.record),
        Claim("customer_status", e.customer_status, origin, at, seq, e.record)]
    # one origin, nothing merged: the claims are the current values, as the Record has them
    s.contacts.current[e.record] = {c.field: c for c in claims}


def _contact_updated(s: TenantState, e: ev.ContactUpdated, seq: int) -> None:
    _claim(s, e.record, dict(e.fields), f"crm:{e.record}", iso(e.occurred_at), seq)
    refresh(s, e.record)


def _connected(s: TenantState, e: ev.ContactSyncConnected, seq: int) -> None:
    s.contacts.connected[e.user] = list(e.categories)


def _synced(s: TenantState, e: ev.ExternalContactSynced, seq: int) -> None:
    cs = s.contacts
    key = (e.user, e.external_id)
    modified = iso(e.modified_at)
    link = cs.links.get(key)
    if link is None:
        link = cs.links[key] = Link(e.user, e.external_id, e.record, e.record)
        cs.by_record.setdefault(e.record, set()).add(key)
    link.modified_at = max(link.modified_at, modified)
    _claim(s, e.record, dict(e.fields), f"exchange:{e.user}:{e.external_id}", modified, seq)
    before = cs.known.get((e.user, e.record))
    cs.known[(e.user, e.record)] = Known(
        {**(before.fields if before else {}), **e.fields},
        tuple(c for c in BASE_CATEGORIES if c in e.categories))
    refresh(s, e.record)


def _deleted(s: TenantState, e: ev.ExternalContactDeleted, seq: int) -> None:
    cs = s.contacts
    link = cs.links[(e.user, e.external_id)]
    link.status, link.reason = "detached", "deleted_externally"
    cs.known.pop((e.user, e.record), None)
    cs.deleted.add((e.user, e.record))


def _category_renamed(s: TenantState, e: ev.ExternalCategoryRenamed, seq: int) -> None:
    if not e.base:
        cats = s.contacts.connected[e.user]
        s.contacts.connected[e.user] = [e.new if c == e.old else c for c in cats]


def _merged(s: TenantState, e: ev.ContactsMerged, seq: int) -> None:
    cs = s.contacts
    for m in e.merged:
        cs.merged_into[m] = e.survivor
        cs.members.setdefault(e.survivor, []).append(m)
    for user, external_id, origin in e.moved:
        link = cs.links[(user, external_id)]
        link.merged_from.append(origin)
        _set_link_record(cs, link, e.survivor)
        known = cs.known.pop((user, origin), None)
        if known is not None:
            cs.known[(user, e.survivor)] = known
    for user, external_id in e.detached:
        link = cs.links[(user, external_id)]
        link.merged_from.append(link.record)
        link.status, link.reason = "detached", "merged"
        cs.known.pop((user, link.record), None)
    refresh(s, e.survivor)


def _unmerged(s: TenantState, e: ev.ContactUnmerged, seq: int) -> None:
    cs = s.contacts
    del cs.merged_into[e.record]
    cs.members[e.survivor].remove(e.record)
    for user, external_id in e.restored:
        link = cs.links[(user, external_id)]
        link.merged_from.pop()
        if link.status == "active":  # it had moved to the survivor: it comes back
            known = cs.known.pop((user, link.record), None)
            if known is not None:
                cs.known[(user, e.record)] = known
        link.status, link.reason = "active", None
        _set_link_record(cs, link, e.record)
    refresh(s, e.survivor)
    refresh(s, e.record)


def _queued(s: TenantState, e: ev.ExternalContactChangeQueued, seq: int) -> None:
    cs = s.contacts
    cs.changes += 1
    if e.record is None:
        return
    key = (e.user, e.record)
    if e.operation == "upsert":
        cs.known[key] = Known(dict(e.fields), tuple(e.categories))
        if e.external_id is None:
            cs.pending[e.change_id] = key
            cs.creating.add(key)
    elif e.operation == "remove":
        link = cs.links.get((e.user, e.external_id or ""))
        if link is not None:
            link.status, link.reason = "detached", "access_lost"
        if link is not None or cs.active_link(e.user, e.record) is None:
            cs.known.pop(key, None)  # (a duplicate that was never linked leaves `known` be)


def _acknowledged(s: TenantState, e: ev.ExternalContactChangeAcknowledged, seq: int) -> None:
    cs = s.contacts
    key = cs.pending.pop(e.change_id, None)
    if key is None:
        return
    cs.creating.discard(key)
    user, record = key
    if cs.active_link(user, record) is not None:
        return  # linked meanwhile (C7): the created one is removed as a duplicate
    if not e.ok or e.external_id is None or user != e.user:
        cs.known.pop(key, None)  # nothing was written: the next change creates it again
        return
    cs.links[(user, e.external_id)] = Link(user, e.external_id, record, record,
                                           modified_at=iso(e.occurred_at))
    cs.by_record.setdefault(record, set()).add((user, e.external_id))


Fold = Callable[["TenantState", Any, int], None]
AFTER: dict[type[ev.DomainEvent], Fold] = {
    ev.ContactCreated: _contact_created,
    ev.ContactUpdated: _contact_updated,
}
FOLDS: dict[type[ev.DomainEvent], Fold] = {
    ev.ContactSyncConnected: _connected,
    ev.ExternalContactSynced: _synced,
    ev.ExternalContactDeleted: _deleted,
    ev.ExternalCategoryRenamed: _category_renamed,
    ev.ContactsMerged: _merged,
    ev.ContactUnmerged: _unmerged,
    ev.ExternalContactChangeQueued: _queued,
    ev.ExternalContactChangeAcknowledged: _acknowledged,
}
