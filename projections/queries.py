"""The query side of SPEC §7, answered from view rows (live, or as of `at` from their histories).

Access (V8) and the owner-dependent part of sharing (V3, V7) are evaluated here from the user and
record rows, so that changes to owners, collaborators, levels and the hierarchy are O(1) in rows.
Unknown, foreign-tenant and invisible ids raise NotFound (V12): an answer never says 'forbidden'.
"""

from __future__ import annotations

from typing import Any

from domain.errors import NotFound
from domain.visibility import access_reason_of, capabilities, level_allows, level_detail
from projections.ports import ViewReader
from projections.rows import OWNER_FIELD, SEP, Doc

Answer = dict[str, Any]


class Lookup:
    """Reads user and record rows once per query."""

    def __init__(self, views: ViewReader, tenant: str) -> None:
        self.views = views
        self.tenant = tenant
        self._docs: dict[str, Doc | None] = {}

    def _doc(self, key: str) -> Doc | None:
        if key not in self._docs:
            ident = key.partition(":")[2]
            self._docs[key] = self.views.rows("directory", self.tenant, key).get(ident)
        return self._docs[key]

    def user(self, user: str) -> Doc | None:
        return self._doc(f"user:{user}")

    def record(self, record: str) -> Doc | None:
        return self._doc(f"record:{record}")

    def active(self, user: str) -> bool:
        doc = self.user(user)
        return doc is not None and doc["status"] == "active"

    def access_reason(self, viewer: str, record: Doc) -> str | None:
        """Why `viewer` is in access(R) (owner, collaborator, manager above, admin), or None."""
        doc = self.user(viewer)
        if doc is None:
            return None
        owner = self.user(record["owner"])
        return access_reason_of(viewer, doc["role"], doc["status"], record["owner"],
                                record["collaborators"], owner["managers"] if owner else ())

    def shared(self, basis: Doc, owner: str, record_id: str) -> tuple[bool, Answer]:
        """shared(owner(T), T, R) from a stored basis; V3 is evaluated now (V7)."""
        if basis["rule"] != "V3":
            return basis["shared"], {**basis["step"], "record": record_id}
        record = self.record(record_id)
        owner_doc = self.user(owner)
        if record is None or owner_doc is None:
            return False, _step("V3", False, "unknown record or owner", record_id)
        found = owner_doc["levels"].get(record["type"])
        level = found["level"] if found else "not_visible"
        outcome = level_allows(level, owner, record["owner"], record["collaborators"])
        event = found["event"] if found else record["owner_event"]
        detail = level_detail(owner, record["type"], level, record["owner"])
        return outcome, _step("V3", outcome, detail, record_id, event)

    def thread_shared(self, records: dict[str, Doc], owner: str) -> bool:
        """The padlock outside a record: shared on at least one linked record."""
        return any(self.shared(b, owner, r)[0] for r, b in records.items())

    def owner_deleted(self, owner: str) -> bool:
        doc = self.user(owner)
        return doc is None or doc["status"] == "deleted"


def _step(rule: str, outcome: bool, detail: str, record: str | None = None,
          event: Any = None) -> Answer:
    return {"rule": rule, "outcome": outcome, "detail": detail, "record": record, "event": event}


def _sort(items: list[Answer]) -> list[Answer]:
    items.sort(key=lambda i: i["thread"])
    items.sort(key=lambda i: i["last_activity"], reverse=True)
    return items


def timeline(views: ViewReader, tenant: str, viewer: str, record: str) -> list[Answer]:
    """Threads V sees on R (V8), newest activity first; each RFC message counted once."""
    look = Lookup(views, tenant)
    rec = look.record(record)
    if rec is None or look.access_reason(viewer, rec) is None:
        raise NotFound()
    visible = []
    for rows in views.scan("timeline", tenant, record + SEP).values():
        row = rows["t"]
        if look.owner_deleted(row["owner"]):
            continue
        is_shared = look.shared(row["basis"], row["owner"], record)[0]
        if row["owner"] == viewer or is_shared:
            visible.append({**row, "shared": is_shared})
    # V8: a message held by several mailboxes shows once: in the viewer's own copy, else in the
    # copy with the smallest thread id.
    home: dict[str, str] = {}
    for row in sorted(visible, key=lambda r: (r["owner"] != viewer, r["thread"])):
        for rfc, _ in row["messages"]:
            if rfc is not None:
                home.setdefault(rfc, row["thread"])
    out = []
    for row in visible:
        seen: set[str] = set()
        counted = []
        for rfc, sent_at in row["messages"]:
            if rfc is None:
                counted.append(sent_at)
            elif home[rfc] == row["thread"] and rfc not in seen:
                seen.add(rfc)
                counted.append(sent_at)
        if not counted:
            continue
        out.append({"thread": row["thread"], "subject": row["subject"], "owner": row["owner"],
                    **_erased(row), "mailbox": row["mailbox"], "messages": len(counted),
                    "last_activity": max(counted), "shared": row["shared"],
                    "capabilities": capabilities(row["owner"] == viewer)})
    return _sort(out)


def mailbox(views: ViewReader, tenant: str, viewer: str, label: str | None = None
            ) -> list[Answer]:
    """V9: the viewer's own threads; nobody else's, whatever their role."""
    look = Lookup(views, tenant)
    if not look.active(viewer):
        return []
    out = []
    for rows in views.scan("mailbox", tenant, viewer + SEP).values():
        row = rows["t"]
        if label is not None and label not in row["labels"]:
            continue
        out.append({"thread": row["thread"], "subject": row["subject"], "owner": row["owner"],
                    **_erased(row), "mailbox": row["mailbox"], "messages": row["messages"],
                    "last_activity": row["last_activity"],
                    "shared": look.thread_shared(row["records"], viewer),
                    "capabilities": capabilities(True)})
    return _sort(out)


def _erased(row: Doc) -> Doc:
    """L2: a thread whose subject is erased says so (the subject is null)."""
    return {"erased": True} if row.get("erased") else {}


def _sees(look: Lookup, viewer: str, row: Doc) -> bool:
    if row["owner"] == viewer:
        return True
    for rid, b in row["records"].items():
        rec = look.record(rid)
        if rec is not None and look.access_reason(viewer, rec) is not None \
                and look.shared(b, row["owner"], rid)[0]:
            return True
    return False


def thread(views: ViewReader, tenant: str, viewer: str, thread_id: str) -> Answer:
    """The messages V may see, with the fields V10 allows (`read` only for the owner)."""
    look = Lookup(views, tenant)
    row = views.rows("thread", tenant, thread_id).get("t")
    if row is None or not look.active(viewer) or not _sees(look, viewer, row):
        raise NotFound()
    is_owner = row["owner"] == viewer
    # OWNER_FIELD: whose key seals the row (L2); a store takes it out, a replay may not
    contents = {rows["m"]["id"]: {k: v for k, v in rows["m"].items() if k != OWNER_FIELD}
                for rows in views.scan("message", tenant, thread_id + SEP).values()}
    messages = []
    for state in row["messages"]:
        item = {**contents[state["id"]], "delivery_status": state["delivery_status"]}
        if is_owner:
            item["read"] = state["read"]
        messages.append(item)
    return {"thread": thread_id, "owner": row["owner"], "mailbox": row["mailbox"],
            "shared": look.thread_shared(row["records"], row["owner"]),
            "capabilities": capabilities(is_owner), "messages": messages}


def _record_chain(look: Lookup, viewer: str, row: Doc | None, record: str, owner: str
                  ) -> tuple[bool, list[Answer]]:
    if row is None:
        return False, [_step("V8", False, f"thread is not linked to {record}", record)]
    steps = [{**row["link"], "record": record}]
    rec = look.record(record)
    reason = look.access_reason(viewer, rec) if rec is not None else None
    if reason is None:
        return False, [*steps, _step("V8", False, f"{viewer} has no access to {record}", record)]
    steps.append(_step("V8", True, f"{viewer} has access to {record}: {reason}", record))
    if viewer == owner:
        return True, [*steps, _step("V8", True, f"{viewer} owns the thread", record)]
    outcome, step = look.shared(row["basis"], owner, record)
    return outcome, [*steps, step]


def explain(views: ViewReader, tenant: str, viewer: str, thread_id: str,
            record: str | None = None, *, audited: bool = False) -> Answer:
    """V11: the decision and the chain of rules and events behind it.

    A viewer who cannot see the thread gets 'not found' (V12), except an admin, who may audit why
    a thread of the tenant is hidden. `audited`: an admin asks on the viewer's behalf (the
    caller checked that), so an invisible thread or an inactive viewer is explained too.
    """
    look = Lookup(views, tenant)
    user = look.user(viewer)
    rows = views.rows("explain", tenant, thread_id)
    thread_row = views.rows("thread", tenant, thread_id).get("t")
    if user is None or thread_row is None:
        raise NotFound()
    if user["status"] != "active":
        if not audited:
            raise NotFound()
        rule = "L1" if user["status"] == "deactivated" else "L2"
        return {"thread": thread_id, "viewer": viewer, "record": record, "visible": False,
                "rules": [_step(rule, False, f"viewer {viewer} is {user['status']}", record)]}
    owner = thread_row["owner"]
    if record is not None:
        if look.record(record) is None:
            raise NotFound()
        visible, rules = _record_chain(look, viewer, rows.get(record), record, owner)
    elif viewer == owner:
        visible, rules = True, [_step("V9", True, f"{viewer} owns mailbox {thread_row['mailbox']}")]
    else:
        visible, rules = False, []
        for rid in sorted(rows):
            ok, chain = _record_chain(look, viewer, rows[rid], rid, owner)
            if ok:
                visible, rules = True, chain
                break
            rules += chain
        if not rows:
            rules = [_step("V9", False, f"only {owner} sees this thread in the mailbox page; it "
                                        "is linked to no record")]
    if not visible and user["role"] != "admin" and not audited:
        raise NotFound()
    return {"thread": thread_id, "viewer": viewer, "record": record, "visible": visible,
            "rules": rules}


def records(views: ViewReader, tenant: str, viewer: str, email: str | None = None
            ) -> list[Answer]:
    """Records V may access (access(R)), optionally those with an address. A merged-away
    contact (C9) is no record of its own any more: its survivor stands in its place (once,
    and only if V may access the survivor)."""
    look = Lookup(views, tenant)
    if not look.active(viewer):
        return []
    found: dict[str, Doc] = {}
    for rows in views.scan("directory", tenant, "record:").values():
        for doc in rows.values():
            if email is None or email.lower() in doc["emails"]:
                found[doc["record"]] = doc
    out: dict[str, Answer] = {}
    for found_doc in found.values():
        shown = _survivor(look, found, found_doc)
        if shown is None or shown["record"] in out or look.access_reason(viewer, shown) is None:
            continue
        out[shown["record"]] = {k: shown[k] for k in ("record", "type", "name", "owner",
                                                      "emails")}
    return [out[r] for r in sorted(out)]


def _survivor(look: Lookup, found: dict[str, Doc], doc: Doc) -> Doc | None:
    """The record row standing for `doc`: itself, or the contact it is merged into, followed
    through merges of survivors (C9)."""
    seen = {doc["record"]}
    current: Doc | None = doc
    while current is not None and current.get("merged_into") is not None:
        parent = current["merged_into"]
        if parent in seen:
            break
        seen.add(parent)
        current = found.get(parent) or look.record(parent)
    return current


def sync_status(views: ViewReader, tenant: str, viewer: str, mailbox_id: str | None = None
                ) -> list[Answer]:
    """Per mailbox status and counters, for the mailbox's owner and the tenant's admins."""
    user = Lookup(views, tenant).user(viewer)
    if user is None or user["status"] != "active":
        raise NotFound()
    out = []
    # one mailbox: its key only (a status has a past version per synced message: scanning
    # every mailbox's to find one is what an `at` question must not do)
    found = [views.rows("sync_status", tenant, mailbox_id)] if mailbox_id is not None \
        else views.scan("sync_status", tenant).values()
    for rows in found:
        for doc in rows.values():
            if doc["user"] == viewer or user["role"] == "admin":
                out.append(doc)
    if mailbox_id is not None:
        out = [d for d in out if d["mailbox"] == mailbox_id]
        if not out:
            raise NotFound()
    return sorted(out, key=lambda d: d["mailbox"])


def contact(views: ViewReader, tenant: str, viewer: str, record: str) -> Answer:
    """Contact merge state (C8-C10) of a contact V may access (V12): survivor, merged ids,
    external links, current values with provenance, kept older values and every value seen.
    A merged-away contact answers only whom it is merged into (its surviving contact)."""
    look = Lookup(views, tenant)
    rec = look.record(record)
    if rec is None or rec["type"] != "contact" or look.access_reason(viewer, rec) is None:
        raise NotFound()
    row = views.rows("contact", tenant, record).get(record)
    if row is None:
        raise NotFound()
    if row["merged_into"] is not None:
        survivor, seen = row["merged_into"], {record}
        while survivor not in seen:
            seen.add(survivor)
            up = views.rows("contact", tenant, survivor).get(survivor)
            if up is None or up["merged_into"] is None:
                break
            survivor = up["merged_into"]
        return {"merged_into": survivor}
    return {"record": record, "survivor": record, "merged": row["merged"], "links": row["links"],
            "fields": row["fields"], "kept": row["kept"], "values": row["values"]}
