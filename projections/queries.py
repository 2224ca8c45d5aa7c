"""The query side of SPEC §7, answered from view rows (live) or from replayed state (`--at`).

Unknown, foreign-tenant and invisible ids raise NotFound (V12): an answer never says 'forbidden'.
"""

from __future__ import annotations

from typing import Any

from domain.errors import NotFound
from domain.visibility import capabilities
from projections.ports import ViewReader
from projections.rows import Doc

Answer = dict[str, Any]


def _user(views: ViewReader, tenant: str, user: str) -> Doc | None:
    return views.rows("directory", tenant, f"user:{user}").get(user)


def _active(views: ViewReader, tenant: str, user: str) -> bool:
    doc = _user(views, tenant, user)
    return doc is not None and doc["status"] == "active"


def _record(views: ViewReader, tenant: str, record: str) -> Doc | None:
    return views.rows("directory", tenant, f"record:{record}").get(record)


def _sort(items: list[Answer]) -> list[Answer]:
    items.sort(key=lambda i: i["thread"])
    items.sort(key=lambda i: i["last_activity"], reverse=True)
    return items


def timeline(views: ViewReader, tenant: str, viewer: str, record: str) -> list[Answer]:
    """Threads V sees on R (V8), newest activity first; each RFC message counted once."""
    rec = _record(views, tenant, record)
    if rec is None or viewer not in rec["access"]:
        raise NotFound()
    visible = [r for r in views.rows("timeline", tenant, record).values()
               if r["owner"] == viewer or r["shared"]]
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
                    "mailbox": row["mailbox"], "messages": len(counted),
                    "last_activity": max(counted), "shared": row["shared"],
                    "capabilities": capabilities(row["owner"] == viewer)})
    return _sort(out)


def mailbox(views: ViewReader, tenant: str, viewer: str, label: str | None = None
            ) -> list[Answer]:
    """V9: the viewer's own threads; nobody else's, whatever their role."""
    if not _active(views, tenant, viewer):
        return []
    out = []
    for row in views.rows("mailbox", tenant, viewer).values():
        if label is not None and label not in row["labels"]:
            continue
        out.append({"thread": row["thread"], "subject": row["subject"], "owner": row["owner"],
                    "mailbox": row["mailbox"], "messages": row["messages"],
                    "last_activity": row["last_activity"], "shared": row["shared"],
                    "capabilities": capabilities(True)})
    return _sort(out)


def _sees(views: ViewReader, tenant: str, viewer: str, row: Doc) -> bool:
    if row["owner"] == viewer:
        return True
    for rid, is_shared in row["records"].items():
        rec = _record(views, tenant, rid)
        if is_shared and rec is not None and viewer in rec["access"]:
            return True
    return False


def thread(views: ViewReader, tenant: str, viewer: str, thread_id: str) -> Answer:
    """The messages V may see, with the fields V10 allows (`read` only for the owner)."""
    row = views.rows("thread", tenant, thread_id).get(thread_id)
    if row is None or not _active(views, tenant, viewer) or not _sees(views, tenant, viewer, row):
        raise NotFound()
    is_owner = row["owner"] == viewer
    fields = ("id", "from", "to", "cc", "subject", "body", "sent_at", "delivery_status")
    messages = []
    for m in row["messages"]:
        item = {f: m[f] for f in fields}
        if is_owner:
            item["read"] = m["read"]
        messages.append(item)
    return {"thread": thread_id, "owner": row["owner"], "mailbox": row["mailbox"],
            "shared": any(row["records"].values()), "capabilities": capabilities(is_owner),
            "messages": messages}


def _step(rule: str, outcome: bool, detail: str, record: str | None = None,
          event: Any = None) -> Answer:
    return {"rule": rule, "outcome": outcome, "detail": detail, "record": record, "event": event}


def _record_chain(views: ViewReader, tenant: str, viewer: str, row: Doc | None, record: str,
                  owner: str) -> tuple[bool, list[Answer]]:
    if row is None:
        return False, [_step("V8", False, f"thread is not linked to {record}", record)]
    steps = [{**row["link"], "record": record}]
    rec = _record(views, tenant, record)
    reason = rec["access"].get(viewer) if rec is not None else None
    if reason is None:
        return False, [*steps, _step("V8", False, f"{viewer} has no access to {record}", record)]
    steps.append(_step("V8", True, f"{viewer} has access to {record}: {reason}", record))
    if viewer == owner:
        return True, [*steps, _step("V8", True, f"{viewer} owns the thread", record)]
    return row["shared"], [*steps, {**row["decided_by"], "record": record}]


def explain(views: ViewReader, tenant: str, viewer: str, thread_id: str,
            record: str | None = None) -> Answer:
    """V11: the decision and the chain of rules and events behind it.

    A viewer who cannot see the thread gets 'not found' (V12), except an admin, who may audit why
    a thread of the tenant is hidden.
    """
    user = _user(views, tenant, viewer)
    rows = views.rows("explain", tenant, thread_id)
    thread_row = views.rows("thread", tenant, thread_id).get(thread_id)
    if user is None or user["status"] != "active" or thread_row is None:
        raise NotFound()
    owner = thread_row["owner"]
    if record is not None:
        if _record(views, tenant, record) is None:
            raise NotFound()
        visible, rules = _record_chain(views, tenant, viewer, rows.get(record), record, owner)
    elif viewer == owner:
        visible, rules = True, [_step("V9", True, f"{viewer} owns mailbox {thread_row['mailbox']}")]
    else:
        visible, rules = False, []
        for rid in sorted(rows):
            ok, chain = _record_chain(views, tenant, viewer, rows[rid], rid, owner)
            if ok:
                visible, rules = True, chain
                break
            rules += chain
        if not rows:
            rules = [_step("V9", False, f"only {owner} sees this thread in the mailbox page; it "
                                        "is linked to no record")]
    if not visible and user["role"] != "admin":
        raise NotFound()
    return {"thread": thread_id, "viewer": viewer, "record": record, "visible": visible,
            "rules": rules}


def records(views: ViewReader, tenant: str, viewer: str, email: str | None = None
            ) -> list[Answer]:
    """Records V may access (access(R)), optionally those with an address."""
    if not _active(views, tenant, viewer):
        return []
    out = []
    for rows in views.scan("directory", tenant, "record:").values():
        for doc in rows.values():
            if viewer not in doc["access"]:
                continue
            if email is not None and email.lower() not in doc["emails"]:
                continue
            out.append({k: doc[k] for k in ("record", "type", "name", "owner", "emails")})
    return sorted(out, key=lambda r: r["record"])


def sync_status(views: ViewReader, tenant: str, viewer: str, mailbox_id: str | None = None
                ) -> list[Answer]:
    """Per mailbox status and counters, for the mailbox's owner and the tenant's admins."""
    user = _user(views, tenant, viewer)
    if user is None or user["status"] != "active":
        raise NotFound()
    out = []
    for rows in views.scan("sync_status", tenant).values():
        for doc in rows.values():
            if doc["user"] == viewer or user["role"] == "admin":
                out.append(doc)
    if mailbox_id is not None:
        out = [d for d in out if d["mailbox"] == mailbox_id]
        if not out:
            raise NotFound()
    return sorted(out, key=lambda d: d["mailbox"])
