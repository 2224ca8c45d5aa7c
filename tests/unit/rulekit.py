"""A tiny builder for rule tests: command dicts in, TenantState out (pure, no I/O).

Every command goes through the real pipeline: parse_command -> decide -> evolve. Commands without
an `at` get one that is a minute after the previous command, so domain time is always explicit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.commands import parse_command
from domain.decide import decide
from domain.errors import Rejection
from domain.events import DomainEvent
from domain.state import TenantState, Thread, evolve
from domain.visibility import record_view, thread_visible

TENANT = "acme"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    """ISO-8601 UTC domain time, `minutes` after T0."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _complete(state: TenantState, cmd: dict[str, Any]) -> dict[str, Any]:
    out = {"tenant": state.tenant, **cmd}
    if "at" not in out:
        last = state.last_at or T0
        out["at"] = (last + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    return out


def run(state: TenantState, cmd: dict[str, Any]) -> list[DomainEvent]:
    """Apply one command to `state` in place; return the events it produced."""
    parsed = parse_command(_complete(state, cmd))
    # the caller's clock is at the command's domain time (E6 refuses an `at` far ahead of it)
    events = decide(state, parsed, now=parsed.at or T0, correlation_id=f"test-{state.seq + 1}")
    for event in events:
        evolve(state, event, state.seq + 1)
    return events


def apply(commands: list[dict[str, Any]], state: TenantState | None = None) -> TenantState:
    """Apply every command in order (each must be accepted) and return the state."""
    state = state if state is not None else TenantState(TENANT)
    for cmd in commands:
        run(state, cmd)
    return state


def rejection(state: TenantState, cmd: dict[str, Any] | str) -> Rejection:
    """The Rejection `cmd` raises; asserts the state did not change."""
    before = (state.seq, state.last_at)
    raw = cmd if isinstance(cmd, str) else _complete(state, cmd)
    with pytest.raises(Rejection) as info:
        parsed = parse_command(raw)
        decide(state, parsed, now=parsed.at or T0, correlation_id="rejected")
    assert (state.seq, state.last_at) == before
    return info.value


def kinds(events: list[DomainEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- command builders ---------------------------------------------------------------------


def user(uid: str, role: str = "member", manager: str | None = None) -> dict[str, Any]:
    cmd: dict[str, Any] = {"cmd": "AddUser", "user": uid, "email": f"{uid}@acme.test",
                           "role": role}
    if manager is not None:
        cmd["manager"] = manager
    return cmd


def mailbox(mbx: str, uid: str, address: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"cmd": "ConnectMailbox", "mailbox": mbx, "user": uid, "provider": "gmail",
            "address": address or f"{uid}@acme.test", **extra}


def msg(mbx: str, mid: str, sender: str, to: list[str], **fields: Any) -> dict[str, Any]:
    """SyncMessage; `fields` go into the message (thread_id, labels, cc, references, ...)."""
    message = {"id": mid, "from": sender, "to": to, "subject": fields.pop("subject", f"re {mid}"),
               "sent_at": fields.pop("sent_at", at(0)), **fields}
    return {"cmd": "SyncMessage", "mailbox": mbx, "message": message}


def contact(rid: str, owner: str, *emails: str) -> dict[str, Any]:
    return {"cmd": "CreateContact", "record": rid, "owner": owner, "name": rid, "kind": "person",
            "emails": list(emails)}


def lead(rid: str, owner: str, *emails: str) -> dict[str, Any]:
    return {"cmd": "CreateLead", "record": rid, "owner": owner, "name": rid,
            "emails": list(emails)}


def deal(rid: str, owner: str, *contacts: str) -> dict[str, Any]:
    return {"cmd": "CreateDeal", "record": rid, "owner": owner, "name": rid,
            "contacts": list(contacts), "stage": "open"}


def level(uid: str, record_type: str, value: str) -> dict[str, Any]:
    return {"cmd": "SetGlobalVisibility", "user": uid, "record_type": record_type,
            "level": value}


def share(uid: str, rid: str, address: str) -> dict[str, Any]:
    return {"cmd": "ShareAddress", "user": uid, "record": rid, "address": address}


def unshare(uid: str, rid: str, address: str, cascade: bool) -> dict[str, Any]:
    return {"cmd": "UnshareAddress", "user": uid, "record": rid, "address": address,
            "cascade": cascade}


def mark(uid: str, threads: list[str], shared: bool) -> dict[str, Any]:
    return {"cmd": "MarkThreadShared" if shared else "MarkThreadPrivate", "user": uid,
            "threads": threads}


# --- reading the state --------------------------------------------------------------------


def thread_of(state: TenantState, mbx: str, mid: str) -> Thread:
    return state.threads[state.messages[(mbx, mid)].thread]


def sees(state: TenantState, viewer: str, thread: Thread | str, record: str) -> bool:
    """V8: does `viewer` see `thread` on `record`'s timeline?"""
    t = state.threads[thread] if isinstance(thread, str) else thread
    return record_view(state, viewer, t, state.records[record])[0]


def visible(state: TenantState, viewer: str, thread: Thread | str) -> bool:
    t = state.threads[thread] if isinstance(thread, str) else thread
    return thread_visible(state, viewer, t)


def deciding_rule(state: TenantState, viewer: str, thread: Thread, record: str) -> str:
    """The rule id of the last step of the V8 chain (V11)."""
    return record_view(state, viewer, thread, state.records[record])[1][-1].rule


# --- a small standard tenant --------------------------------------------------------------

CUSTOMER = "carla@customer.test"


def office() -> list[dict[str, Any]]:
    """admin `boss`; manager `mgr`; members `ann` (reports to mgr) and `bob`; `ann` has mailbox
    `mb-ann`. Contact `c1` (owner bob, address CUSTOMER) with deal `d1` (owner bob)."""
    return [
        user("boss", "admin"), user("mgr", "manager"), user("ann", manager="mgr"), user("bob"),
        mailbox("mb-ann", "ann"),
        contact("c1", "bob", CUSTOMER), deal("d1", "bob", "c1"),
    ]


def office_with_thread(*extra: dict[str, Any]) -> tuple[TenantState, Thread]:
    """`office()` plus a message from CUSTOMER to ann (thread `mb-ann:t1`), then `extra`."""
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1"),
                   *extra])
    return state, state.threads["mb-ann:t1"]
