"""A small, independent reference model of SPEC §2-§3 (visibility and user lifecycle).

Written straight from the SPEC and the recorded decisions, with plain dicts and sets; it imports
nothing from the engine (domain/, projections/, adapters/, runners/). The property test in
test_property_visibility.py applies the same random history to the engine and to this model and
compares every answer.

Each command has one function `<snake_name>(model, cmd, engine_ok) -> verdict` (see COMMANDS):
- verdict OK / REJECT is the model's own decision (compared with the engine's report);
- verdict UNSURE means the SPEC leaves acceptance open for this case: the model then follows the
  engine's verdict (`engine_ok`) for the effect, and the test does not compare the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

OK = "ok"
REJECT = "reject"
UNSURE = "unsure"

LEVELS = ("not_visible", "visible", "visible_if_owner", "visible_if_owner_or_collaborator")


@dataclass
class Model:
    # user id -> {"email", "role", "manager", "status"}; status active|deactivated|deleted
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    # mailbox id -> {"user", "address"}
    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # record id -> {"type", "owner", "collaborators": set, "emails": set (lower), "contacts": list}
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (mailbox, provider message id) -> message dict (with "thread", "seq", parsed "sent")
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # thread id -> {"mailbox", "messages": [keys in arrival order]}
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (mailbox, rfc message id) -> thread id
    rfc: dict[tuple[str, str], str] = field(default_factory=dict)
    # S13 amended: (mailbox, rfc id named as a parent but never synced) -> thread of the first
    # message that named it
    missing: dict[tuple[str, str], str] = field(default_factory=dict)
    # (thread, record) -> True (LinkThread) / False (UnlinkThread); latest wins
    manual: dict[tuple[str, str], bool] = field(default_factory=dict)
    # thread -> True (MarkThreadShared) / False (MarkThreadPrivate)
    flags: dict[str, bool] = field(default_factory=dict)
    # (user, record, address) -> "shared" | "unshared" | "none" (pinned: fall through to V3)
    settings: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # (user, record type) -> level
    levels: dict[tuple[str, str], str] = field(default_factory=dict)
    seq: int = 0
    # L2/E4: users whose content is erased; applies as of now, so a past snapshot is compared
    # with the erasures of the whole history
    erased: set[str] = field(default_factory=set)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


# --- helpers --------------------------------------------------------------------------------


def _active(m: Model, user: str | None) -> bool:
    return user is not None and user in m.users and m.users[user]["status"] == "active"


def _status(m: Model, user: str | None) -> str | None:
    """None for unknown users, else the lifecycle status."""
    if user is None or user not in m.users:
        return None
    return str(m.users[user]["status"])


def _user_ref(m: Model, user: str | None) -> str:
    """Verdict for a reference to a user who must exist (and be usable)."""
    status = _status(m, user)
    if status is None:
        return REJECT
    if status != "active":
        return UNSURE
    return OK


def addresses(m: Model, record: str) -> set[str]:
    r = m.records[record]
    if r["type"] == "deal":
        out: set[str] = set()
        for c in r["contacts"]:
            out |= m.records[c]["emails"]
        return out
    return set(r["emails"])


def _deals_of_contact(m: Model, contact: str) -> list[str]:
    return sorted(
        rid for rid, r in m.records.items() if r["type"] == "deal" and contact in r["contacts"]
    )


def internal_addresses(m: Model) -> set[str]:
    out = {u["email"].lower() for u in m.users.values()}
    out |= {mb["address"].lower() for mb in m.mailboxes.values()}
    return out


def access(m: Model, record: str) -> set[str]:
    r = m.records[record]
    out = {r["owner"], *r["collaborators"]}
    seen: set[str] = set()
    cur = m.users[r["owner"]]["manager"] if r["owner"] in m.users else None
    while cur is not None and cur not in seen and cur in m.users:
        seen.add(cur)
        out.add(cur)
        cur = m.users[cur]["manager"]
    out |= {u for u, d in m.users.items() if d["role"] == "admin"}
    return {u for u in out if _active(m, u)}


def thread_owner(m: Model, thread: str) -> str:
    return str(m.mailboxes[m.threads[thread]["mailbox"]]["user"])


def participants(m: Model, thread: str) -> set[str]:
    out: set[str] = set()
    for key in m.threads[thread]["messages"]:
        msg = m.messages[key]
        out |= {
            a.lower() for a in [msg["from"], *msg["to"], *msg.get("cc", []), *msg.get("bcc", [])]
        }
    return out


def links(m: Model, thread: str) -> set[str]:
    parts = participants(m, thread) - internal_addresses(m)
    auto: set[str] = set()
    for rid, r in m.records.items():
        if r["type"] in ("lead", "contact") and r["emails"] & parts:
            auto.add(rid)
    for rid, r in m.records.items():
        if r["type"] == "deal" and any(
            c in auto and m.records[c]["type"] == "contact" for c in r["contacts"]
        ):
            auto.add(rid)
    for (t, rid), linked in m.manual.items():
        if t != thread or rid not in m.records:
            continue
        if linked:
            auto.add(rid)
        else:
            auto.discard(rid)
    return auto


def _inherited(m: Model, user: str, deal: str, address: str) -> str:
    """U's setting for `address` on the deal's contacts having it: shared wins over unshared."""
    found = set()
    for c in m.records[deal]["contacts"]:
        if address in m.records[c]["emails"]:
            found.add(m.settings.get((user, c, address), "none"))
    if "shared" in found:
        return "shared"
    if "unshared" in found:
        return "unshared"
    return "none"


def _address_setting(m: Model, user: str, record: str, address: str) -> str:
    own = m.settings.get((user, record, address))
    if own is not None:
        return own
    if m.records[record]["type"] == "deal":
        return _inherited(m, user, record, address)
    return "none"


def shared(m: Model, user: str, thread: str, record: str) -> bool:
    if thread in m.flags:  # V1
        return m.flags[thread]
    r = m.records[record]
    found = {
        _address_setting(m, user, record, a) for a in participants(m, thread) & addresses(m, record)
    }
    if "shared" in found:  # V2
        return True
    if "unshared" in found:
        return False
    level = m.levels.get((user, r["type"]), "not_visible")  # V3
    if level == "visible":
        return True
    if level == "visible_if_owner":
        return user == r["owner"]
    if level == "visible_if_owner_or_collaborator":
        return user == r["owner"] or user in r["collaborators"]
    return False


def sees_on_record(m: Model, viewer: str, thread: str, record: str) -> bool:
    """V8."""
    owner = thread_owner(m, thread)
    if not _active(m, viewer) or m.users[owner]["status"] == "deleted":
        return False
    if record not in links(m, thread) or viewer not in access(m, record):
        return False
    return viewer == owner or shared(m, owner, thread, record)


# --- commands -------------------------------------------------------------------------------


def _decide(verdict: str, engine_ok: bool) -> bool:
    return verdict == OK or (verdict == UNSURE and engine_ok)


def add_user(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["user"] in m.users:
        return REJECT
    verdict = OK if c.get("manager") is None else _user_ref(m, c.get("manager"))
    if verdict == REJECT:
        return verdict
    if any(u["email"].lower() == c["email"].lower() for u in m.users.values()):
        verdict = UNSURE
    if _decide(verdict, engine_ok):
        m.users[c["user"]] = {
            "email": c["email"],
            "role": c["role"],
            "manager": c.get("manager"),
            "status": "active",
        }
    return verdict


def change_user_manager(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    user, manager = c["user"], c["manager"]
    if _status(m, user) is None:
        return REJECT
    verdict = _user_ref(m, user)
    if manager is not None:
        mv = _user_ref(m, manager)
        if mv == REJECT:
            return REJECT
        if mv == UNSURE:
            verdict = UNSURE
        # self-management or a cycle: the SPEC does not say
        cur: str | None = manager
        seen: set[str] = set()
        while cur is not None and cur not in seen:
            if cur == user:
                verdict = UNSURE
                break
            seen.add(cur)
            cur = m.users[cur]["manager"]
    if _decide(verdict, engine_ok):
        m.users[user]["manager"] = manager
    return verdict


def deactivate_user(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if _status(m, c["user"]) != "active":
        return REJECT
    m.users[c["user"]]["status"] = "deactivated"
    return OK


def reactivate_user(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if _status(m, c["user"]) != "deactivated":
        return REJECT
    m.users[c["user"]]["status"] = "active"
    return OK


def delete_user(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    user, to = c["user"], c.get("reassign_to")
    status = _status(m, user)
    if status is None or status == "deleted":
        return REJECT
    owned = [rid for rid, r in m.records.items() if r["owner"] == user]
    verdict = OK
    if to is not None and (to == user or not _active(m, to)):
        verdict = REJECT if owned else UNSURE
    elif owned and to is None:
        verdict = REJECT
    if _decide(verdict, engine_ok):
        m.users[user]["status"] = "deleted"
        m.erased.add(user)
        for rid in owned:
            m.records[rid]["owner"] = to
    return verdict


def connect_mailbox(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["mailbox"] in m.mailboxes:
        return REJECT
    verdict = _user_ref(m, c["user"])
    if _decide(verdict, engine_ok):
        m.mailboxes[c["mailbox"]] = {"user": c["user"], "address": c["address"]}
    return verdict


def _create_record(m: Model, c: dict[str, Any], engine_ok: bool, kind: str) -> str:
    if c["record"] in m.records:
        return REJECT
    verdict = _user_ref(m, c["owner"])
    if verdict == REJECT:
        return verdict
    contacts: list[str] = []
    if kind == "deal":
        for cid in c["contacts"]:
            if cid not in m.records or m.records[cid]["type"] != "contact":
                return REJECT
            if cid not in contacts:
                contacts.append(cid)
    if _decide(verdict, engine_ok):
        m.records[c["record"]] = {
            "type": kind,
            "owner": c["owner"],
            "collaborators": set(),
            "emails": {e.lower() for e in c.get("emails", [])},
            "contacts": contacts,
        }
    return verdict


def create_lead(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return _create_record(m, c, engine_ok, "lead")


def create_contact(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return _create_record(m, c, engine_ok, "contact")


def create_deal(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return _create_record(m, c, engine_ok, "deal")


def link_deal_contact(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    deal, contact = m.records.get(c["deal"]), m.records.get(c["contact"])
    if deal is None or contact is None or deal["type"] != "deal" or contact["type"] != "contact":
        return REJECT
    if c["contact"] in deal["contacts"]:
        return UNSURE  # already linked: a no-op either way
    deal["contacts"].append(c["contact"])
    return OK


def change_owner(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["record"] not in m.records:
        return REJECT
    verdict = _user_ref(m, c["owner"])
    if verdict == OK and m.records[c["record"]]["owner"] == c["owner"]:
        verdict = UNSURE
    if _decide(verdict, engine_ok):
        m.records[c["record"]]["owner"] = c["owner"]
    return verdict


def add_collaborator(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["record"] not in m.records:
        return REJECT
    r = m.records[c["record"]]
    verdict = _user_ref(m, c["user"])
    if verdict == OK and (c["user"] in r["collaborators"] or c["user"] == r["owner"]):
        verdict = UNSURE
    if _decide(verdict, engine_ok):
        r["collaborators"].add(c["user"])
    return verdict


def remove_collaborator(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["record"] not in m.records or _status(m, c["user"]) is None:
        return REJECT
    r = m.records[c["record"]]
    if c["user"] not in r["collaborators"]:
        return UNSURE  # a no-op either way
    r["collaborators"].discard(c["user"])
    return OK


def _thread_cmd_verdict(m: Model, user: str, threads: list[str]) -> str:
    if _status(m, user) is None:
        return REJECT
    for t in threads:
        if t not in m.threads or thread_owner(m, t) != user:
            return REJECT
    return _user_ref(m, user)


def link_thread(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["record"] not in m.records:
        return REJECT
    verdict = _thread_cmd_verdict(m, c["user"], [c["thread"]])
    if _decide(verdict, engine_ok):
        m.manual[(c["thread"], c["record"])] = True
    return verdict


def unlink_thread(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    if c["record"] not in m.records:
        return REJECT
    verdict = _thread_cmd_verdict(m, c["user"], [c["thread"]])
    if verdict == OK and c["record"] not in links(m, c["thread"]):
        verdict = UNSURE  # unlinking a record that is not linked
    if _decide(verdict, engine_ok):
        m.manual[(c["thread"], c["record"])] = False
    return verdict


def _mark(m: Model, c: dict[str, Any], engine_ok: bool, value: bool) -> str:
    verdict = _thread_cmd_verdict(m, c["user"], c["threads"])
    if _decide(verdict, engine_ok):
        for t in c["threads"]:
            m.flags[t] = value
    return verdict


def mark_thread_shared(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return _mark(m, c, engine_ok, True)


def mark_thread_private(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return _mark(m, c, engine_ok, False)


def set_global_visibility(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    verdict = _user_ref(m, c["user"])
    if _decide(verdict, engine_ok):
        m.levels[(c["user"], c["record_type"])] = c["level"]
    return verdict


def _address_cmd_verdict(m: Model, c: dict[str, Any]) -> str:
    if c["record"] not in m.records or _status(m, c["user"]) is None:
        return REJECT
    if c["address"].lower() not in addresses(m, c["record"]):
        return REJECT
    return _user_ref(m, c["user"])


def share_address(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    verdict = _address_cmd_verdict(m, c)
    if not _decide(verdict, engine_ok):
        return verdict
    user, rid, a = c["user"], c["record"], c["address"].lower()
    m.settings[(user, rid, a)] = "shared"
    if m.records[rid]["type"] == "contact":  # V5: a deal's own non-shared setting turns shared
        for d in _deals_of_contact(m, rid):
            if (user, d, a) in m.settings:
                m.settings[(user, d, a)] = "shared"
    return verdict


def unshare_address(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    verdict = _address_cmd_verdict(m, c)
    if not _decide(verdict, engine_ok):
        return verdict
    user, rid, a = c["user"], c["record"], c["address"].lower()
    r = m.records[rid]
    if r["type"] == "contact":
        deals = _deals_of_contact(m, rid)
        if c["cascade"]:
            for d in deals:
                m.settings[(user, d, a)] = "unshared"
        else:  # V6: every linked deal keeps exactly the effective setting it had
            for d in deals:
                if (user, d, a) not in m.settings:
                    m.settings[(user, d, a)] = _inherited(m, user, d, a)
    elif r["type"] == "deal" and c["cascade"]:
        for cid in r["contacts"]:
            if a in m.records[cid]["emails"]:
                m.settings[(user, cid, a)] = "unshared"
    m.settings[(user, rid, a)] = "unshared"
    return verdict


def sync_message(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    mb = m.mailboxes.get(c["mailbox"])
    if mb is None:
        return REJECT
    msg = c["message"]
    status = m.users[mb["user"]]["status"]
    if status != "active":
        return UNSURE  # L1 skipped (deactivated) / deleted owner: never applied
    key = (c["mailbox"], msg["id"])
    if key in m.messages:
        return UNSURE  # S14: the same provider message is one message
    if msg.get("thread_id"):
        thread = f"{c['mailbox']}:{msg['thread_id']}"
    else:
        thread = f"{c['mailbox']}:crmsync-{msg['id']}"
        refs = []
        if msg.get("message_id"):  # another copy of this RFC message (decisions: IMAP folders)
            refs.append(msg["message_id"])
        if msg.get("in_reply_to"):
            refs.append(msg["in_reply_to"])
        refs.extend(reversed(msg.get("references") or []))
        for ref in refs:
            found = m.rfc.get((c["mailbox"], ref)) or m.missing.get((c["mailbox"], ref))
            if found:
                thread = found
                break
    m.seq += 1
    stored = dict(msg)
    stored.update(thread=thread, seq=m.seq, sent=parse_time(msg["sent_at"]))
    m.messages[key] = stored
    m.threads.setdefault(thread, {"mailbox": c["mailbox"], "messages": []})["messages"].append(key)
    if msg.get("message_id"):
        m.rfc.setdefault((c["mailbox"], msg["message_id"]), thread)
        m.missing.pop((c["mailbox"], msg["message_id"]), None)
    for ref in [msg.get("in_reply_to"), *(msg.get("references") or [])]:
        if ref and ref != msg.get("message_id") and (c["mailbox"], ref) not in m.rfc:
            m.missing.setdefault((c["mailbox"], ref), thread)
    return OK


COMMANDS = {
    "AddUser": add_user,
    "ChangeUserManager": change_user_manager,
    "DeactivateUser": deactivate_user,
    "ReactivateUser": reactivate_user,
    "DeleteUser": delete_user,
    "ConnectMailbox": connect_mailbox,
    "CreateLead": create_lead,
    "CreateContact": create_contact,
    "CreateDeal": create_deal,
    "LinkDealContact": link_deal_contact,
    "ChangeOwner": change_owner,
    "AddCollaborator": add_collaborator,
    "RemoveCollaborator": remove_collaborator,
    "LinkThread": link_thread,
    "UnlinkThread": unlink_thread,
    "MarkThreadShared": mark_thread_shared,
    "MarkThreadPrivate": mark_thread_private,
    "SetGlobalVisibility": set_global_visibility,
    "ShareAddress": share_address,
    "UnshareAddress": unshare_address,
    "SyncMessage": sync_message,
}


def apply(m: Model, c: dict[str, Any], engine_ok: bool) -> str:
    return COMMANDS[c["cmd"]](m, c, engine_ok)


# --- queries ---------------------------------------------------------------------------------


class ModelNotFoundError(Exception):
    pass


def _capabilities(is_owner: bool) -> dict[str, bool]:
    return {
        "view": True,
        "delivery_status": True,
        "read_status": is_owner,
        "reply": is_owner,
        "forward": True,
    }


def _ordered(m: Model, thread: str) -> list[dict[str, Any]]:
    msgs = [m.messages[k] for k in m.threads[thread]["messages"]]
    return sorted(msgs, key=lambda x: (x["sent"], x["seq"]))


def _shared_any(m: Model, thread: str) -> bool:
    owner = thread_owner(m, thread)
    return any(shared(m, owner, thread, r) for r in links(m, thread))


def _summary(
    m: Model, thread: str, counted: list[dict[str, Any]], viewer: str, is_shared: bool
) -> dict[str, Any]:
    owner = thread_owner(m, thread)
    erased = {"subject": None, "erased": True} if owner in m.erased else {
        "subject": _ordered(m, thread)[0]["subject"]}
    return {
        "thread": thread,
        **erased,
        "owner": owner,
        "mailbox": m.threads[thread]["mailbox"],
        "messages": len(counted),
        "last_activity": max(x["sent"] for x in counted).isoformat(),
        "shared": is_shared,
        "capabilities": _capabilities(viewer == owner),
    }


def _sort(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items.sort(key=lambda i: i["thread"])
    items.sort(key=lambda i: i["last_activity"], reverse=True)
    return items


def timeline(m: Model, viewer: str, record: str) -> list[dict[str, Any]]:
    if record not in m.records or viewer not in access(m, record):
        raise ModelNotFoundError(record)
    visible = sorted(t for t in m.threads if sees_on_record(m, viewer, t, record))
    # RFC dedupe: a message_id in several visible threads counts once
    holders: dict[str, list[str]] = {}
    for t in visible:
        for k in m.threads[t]["messages"]:
            mid = m.messages[k].get("message_id")
            if mid and t not in holders.setdefault(mid, []):
                holders[mid].append(t)
    chosen: dict[str, str] = {}
    for mid, ts in holders.items():
        own = [t for t in ts if thread_owner(m, t) == viewer]
        chosen[mid] = min(own) if own else min(ts)
    out = []
    for t in visible:
        counted = [
            m.messages[k]
            for k in m.threads[t]["messages"]
            if not m.messages[k].get("message_id") or chosen[m.messages[k]["message_id"]] == t
        ]
        if counted:
            out.append(_summary(m, t, counted, viewer, shared(m, thread_owner(m, t), t, record)))
    return _sort(out)


def mailbox(m: Model, viewer: str, label: str | None = None) -> list[dict[str, Any]]:
    if not _active(m, viewer):
        return []
    out = []
    for t, th in sorted(m.threads.items()):
        if m.mailboxes[th["mailbox"]]["user"] != viewer:
            continue
        msgs = [m.messages[k] for k in th["messages"]]
        if label is not None and not any(label in x.get("labels", []) for x in msgs):
            continue
        out.append(_summary(m, t, msgs, viewer, _shared_any(m, t)))
    return _sort(out)


def thread(m: Model, viewer: str, thread_id: str) -> dict[str, Any]:
    if thread_id not in m.threads or not _active(m, viewer):
        raise ModelNotFoundError(thread_id)
    owner = thread_owner(m, thread_id)
    is_owner = viewer == owner
    if not is_owner and not any(
        sees_on_record(m, viewer, thread_id, r) for r in links(m, thread_id)
    ):
        raise ModelNotFoundError(thread_id)
    messages = []
    for x in _ordered(m, thread_id):
        item = {
            "id": x["id"],
            "message_id": x.get("message_id"),
            "from": x["from"].lower(),
            "to": sorted({a.lower() for a in x["to"]}),
            "cc": sorted({a.lower() for a in x.get("cc", [])}),
            **({"subject": None, "body": None, "erased": True} if owner in m.erased
               else {"subject": x["subject"], "body": x.get("body", "")}),
            "sent_at": x["sent"].isoformat(),
            # S8 is not modelled here: the generated messages carry no attachments
            "attachments": [],
            "delivery_status": x.get("delivery_status"),
        }
        if is_owner:
            item["read"] = x.get("read", False)
        messages.append(item)
    return {
        "thread": thread_id,
        "shared": _shared_any(m, thread_id),
        "capabilities": _capabilities(is_owner),
        "messages": messages,
    }
