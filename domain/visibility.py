"""Visibility rules of SPEC §2 (V1-V12) and the lifecycle parts of §3 that affect them.

Every decision comes with the chain of steps that made it (V11): the rule id, the outcome, a short
detail and the event that set the deciding state.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from domain.state import EventRef, Record, TenantState, Thread

CAPABILITIES = ("view", "delivery_status", "read_status", "reply", "forward")


@dataclass(frozen=True)
class Step:
    rule: str
    outcome: bool
    detail: str
    event: EventRef | None = None

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "outcome": self.outcome, "detail": self.detail,
                "event": self.event.as_json() if self.event else None}


def capabilities(is_owner: bool) -> dict[str, bool]:
    """V10: the owner has all five; others view, see delivery status and forward."""
    return {"view": True, "delivery_status": True, "read_status": is_owner, "reply": is_owner,
            "forward": True}


def manager_chain(s: TenantState, user: str) -> list[str]:
    """Every manager above `user`, nearest first; loop-safe. Inactive managers are passed
    through (the hierarchy stays) but filtered out by `access`."""
    out: list[str] = []
    seen = {user}
    current = s.users[user].manager if user in s.users else None
    while current is not None and current not in seen and current in s.users:
        out.append(current)
        seen.add(current)
        current = s.users[current].manager
    return out


def access(s: TenantState, record: Record) -> set[str]:
    """access(R): owner, collaborators, managers above the owner, admins; active users only."""
    candidates = {record.owner, *record.collaborators, *manager_chain(s, record.owner)}
    candidates.update(u.id for u in s.users.values() if u.role == "admin")
    return {u for u in candidates if u in s.users and s.users[u].active}


def access_reason(s: TenantState, viewer: str, record: Record) -> str | None:
    """Why `viewer` is in access(R), or None."""
    user = s.users.get(viewer)
    if user is None:
        return None
    return access_reason_of(viewer, user.role, user.status, record.owner, record.collaborators,
                            manager_chain(s, record.owner))


def access_reason_of(viewer: str, role: str, status: str, owner: str,
                     collaborators: Collection[str], managers_of_owner: Collection[str]
                     ) -> str | None:
    """access(R) (V8) from plain facts, shared by the rules and the queries over view rows:
    owner, collaborator, manager above the owner, admin; active users only."""
    if status != "active":
        return None
    if viewer == owner:
        return "owner of the record"
    if viewer in collaborators:
        return "collaborator on the record"
    if viewer in managers_of_owner:
        return f"manager above the record's owner {owner}"
    if role == "admin":
        return "admin of the tenant"
    return None


def participants(s: TenantState, thread: Thread) -> set[str]:
    """Addresses taking part in any live message of the thread."""
    if not s.message_content:
        raise ValueError("participants: this state keeps no message content")
    return set(thread.participants)


def links(s: TenantState, thread: Thread) -> dict[str, Step]:
    """links(T): records linked to T with the step that linked each (S4, S5, LinkThread)."""
    found: dict[str, Step] = {}
    for address in sorted(participants(s, thread) - s.user_addresses):
        for rid in sorted(s.address_records.get(address, ())):
            found.setdefault(rid, Step("S4", True,
                                       f"participant {address} is an address of {rid}"))
            for deal in sorted(s.deals_of_contact.get(rid, ())):
                found.setdefault(deal, Step("S4", True,
                                            f"deal linked to contact {rid} ({address})"))
    for rid, (linked, ref) in sorted((thread.manual or {}).items()):
        if linked:
            found[rid] = Step("LinkThread", True, f"manually linked to {rid}", ref)
        else:
            found.pop(rid, None)
    return {r: step for r, step in found.items() if r in s.records}


def _address_setting(s: TenantState, user: str, record: Record, address: str
                     ) -> tuple[str, EventRef] | None:
    """The effective manual setting of `user` for `address` on `record` (V2, V5 inheritance)."""
    own = record.settings.get((user, address))
    if own is not None:
        return None if own[0] == "default" else own
    if record.type != "deal":
        return None
    inherited: list[tuple[str, EventRef]] = []
    for cid in record.contacts:
        contact = s.records.get(cid)
        if contact is None or address not in contact.emails:
            continue
        setting = contact.settings.get((user, address))
        if setting is not None and setting[0] != "default":
            inherited.append(setting)
    for wanted in ("shared", "unshared"):
        for setting in inherited:
            if setting[0] == wanted:
                return setting
    return None


def effective_address_setting(s: TenantState, user: str, record: Record, address: str) -> str:
    """`shared`, `unshared` or `default`: what an address setting resolves to (used by V6 pins)."""
    found = _address_setting(s, user, record, address)
    return "default" if found is None else found[0]


def shared(s: TenantState, thread: Thread, record: Record) -> tuple[bool, Step]:
    """shared(U, T, R) for U = owner(T), by precedence V1, V2, V3; returns the deciding step."""
    owner_id = s.thread_owner(thread)
    if thread.flag is not None:
        flag, ref = thread.flag
        word = "shared" if flag else "private"
        return flag, Step("V1", flag, f"thread marked {word} by {owner_id}", ref)
    addresses = sorted(participants(s, thread) & s.record_addresses(record))
    settings = [(a, _address_setting(s, owner_id, record, a)) for a in addresses]
    for wanted, outcome in (("shared", True), ("unshared", False)):
        for address, setting in settings:
            if setting is not None and setting[0] == wanted:
                return outcome, Step("V2", outcome, f"{owner_id} {wanted} {address} on "
                                     f"{record.id} ({setting[1].type})", setting[1])
    owner = s.users[owner_id]
    found = owner.levels.get(record.type)
    level = found[0] if found is not None else "not_visible"
    level_ref = found[1] if found is not None else record.owner_ref
    outcome = level_allows(level, owner_id, record.owner, record.collaborators)
    return outcome, Step("V3", outcome, level_detail(owner_id, record.type, level, record.owner),
                         level_ref)


def level_allows(level: str, user: str, record_owner: str, collaborators: Collection[str]
                 ) -> bool:
    """V3: does `user`'s global level share their mail on a record with this owner?"""
    if level == "visible":
        return True
    if level == "visible_if_owner":
        return user == record_owner
    if level == "visible_if_owner_or_collaborator":
        return user == record_owner or user in collaborators
    return False


def level_detail(user: str, record_type: str, level: str, record_owner: str) -> str:
    return f"{user}'s global level for {record_type}s is {level} (record owner {record_owner})"


def record_view(s: TenantState, viewer: str, thread: Thread, record: Record
                ) -> tuple[bool, list[Step]]:
    """V8 (with L1/L2): may `viewer` see `thread` on `record`? Returns the rule chain."""
    steps: list[Step] = []
    user = s.users.get(viewer)
    if user is None or not user.active:
        status = "unknown" if user is None else user.status
        return False, [Step("L1" if status == "deactivated" else "V8", False,
                            f"viewer {viewer} is {status}")]
    owner_id = s.thread_owner(thread)
    if s.users[owner_id].status == "deleted":
        return False, [Step("L2", False, f"thread owner {owner_id} was deleted")]
    link = links(s, thread).get(record.id)
    if link is None:
        return False, [Step("V8", False, f"thread is not linked to {record.id}")]
    steps.append(link)
    reason = access_reason(s, viewer, record)
    if reason is None:
        return False, [*steps, Step("V8", False, f"{viewer} has no access to {record.id}")]
    steps.append(Step("V8", True, f"{viewer} has access to {record.id}: {reason}"))
    if viewer == owner_id:
        return True, [*steps, Step("V8", True, f"{viewer} owns the thread")]
    is_shared, step = shared(s, thread, record)
    return is_shared, [*steps, step]


def thread_visible(s: TenantState, viewer: str, thread: Thread) -> bool:
    """V8/V9: the owner sees own threads (while active); others through a record they access."""
    user = s.users.get(viewer)
    if user is None or not user.active:
        return False
    owner_id = s.thread_owner(thread)
    if owner_id == viewer:
        return True
    if s.users[owner_id].status == "deleted":
        return False
    return any(record_view(s, viewer, thread, s.records[rid])[0] for rid in links(s, thread))
