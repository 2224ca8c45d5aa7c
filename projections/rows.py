"""The rows of each projection as pure functions of tenant state (SPEC E3).

A projection's rows are grouped by key (a record, a thread, a user, a mailbox); `rows(state, key)`
returns the complete set of rows for that key, so a changed key is rewritten whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from domain.state import Message, TenantState, Thread
from domain.visibility import access, access_reason, links, manager_chain, shared, shared_anywhere

Doc = dict[str, Any]
Rows = dict[str, Doc]  # row key -> document


def _iso(m: Message) -> str:
    return m.sent_at.isoformat()


def ordered_messages(state: TenantState, thread: Thread) -> list[Message]:
    live = state.live_messages(thread)
    order = {mid: i for i, mid in enumerate(thread.messages)}
    return sorted(live, key=lambda m: (m.sent_at, order[m.id]))


def _visible_thread(state: TenantState, thread: Thread) -> bool:
    """Threads of deleted users leave every view (L2); empty threads show nowhere."""
    return state.users[state.thread_owner(thread)].status != "deleted" and bool(
        state.live_messages(thread))


def directory_rows(state: TenantState, key: str) -> Rows:
    kind, _, ident = key.partition(":")
    if kind == "user":
        user = state.users.get(ident)
        if user is None:
            return {}
        return {ident: {"user": user.id, "email": user.email, "role": user.role,
                        "manager": user.manager, "status": user.status,
                        "managers": manager_chain(state, user.id)}}
    record = state.records.get(ident)
    if record is None:
        return {}
    reasons = {u: access_reason(state, u, record) for u in sorted(access(state, record))}
    return {ident: {"record": record.id, "type": record.type, "name": record.name,
                    "owner": record.owner, "emails": sorted(state.record_addresses(record)),
                    "access": reasons}}


def timeline_rows(state: TenantState, key: str) -> Rows:
    """Per record: each linked thread of a non-deleted owner, its padlock and its messages."""
    record = state.records.get(key)
    if record is None:
        return {}
    out: Rows = {}
    for thread_id in sorted(threads_of_record(state, key)):
        thread = state.threads[thread_id]
        if not _visible_thread(state, thread) or key not in links(state, thread):
            continue
        msgs = ordered_messages(state, thread)
        out[thread_id] = {"thread": thread_id, "mailbox": thread.mailbox,
                          "owner": state.thread_owner(thread), "subject": msgs[0].subject,
                          "shared": shared(state, thread, record)[0],
                          "messages": [[m.rfc_id, _iso(m)] for m in msgs]}
    return out


def mailbox_rows(state: TenantState, key: str) -> Rows:
    """Per user: every thread of the user's mailboxes (V9)."""
    user = state.users.get(key)
    if user is None or user.status == "deleted":
        return {}
    out: Rows = {}
    for thread in state.threads.values():
        if state.thread_owner(thread) != key or not _visible_thread(state, thread):
            continue
        msgs = ordered_messages(state, thread)
        out[thread.id] = {"thread": thread.id, "mailbox": thread.mailbox, "owner": key,
                          "subject": msgs[0].subject, "shared": shared_anywhere(state, thread),
                          "messages": len(msgs), "last_activity": max(_iso(m) for m in msgs),
                          "labels": sorted({label for m in msgs for label in m.labels})}
    return out


def thread_rows(state: TenantState, key: str) -> Rows:
    """Per thread: its messages with every field, and the records it is shared on."""
    thread = state.threads.get(key)
    if thread is None or not _visible_thread(state, thread):
        return {}
    linked = links(state, thread)
    msgs = [{"id": m.id, "from": m.from_, "to": m.to, "cc": m.cc, "subject": m.subject,
             "body": m.body, "sent_at": _iso(m), "delivery_status": m.delivery_status,
             "read": m.read, "labels": m.labels, "attachments": m.attachments}
            for m in ordered_messages(state, thread)]
    records = {r: shared(state, thread, state.records[r])[0] for r in sorted(linked)}
    return {key: {"thread": key, "mailbox": thread.mailbox, "owner": state.thread_owner(thread),
                  "records": records, "messages": msgs}}


def explain_rows(state: TenantState, key: str) -> Rows:
    """Per thread and linked record: how it is linked and which rule decides the padlock (V11)."""
    thread = state.threads.get(key)
    if thread is None or not _visible_thread(state, thread):
        return {}
    out: Rows = {}
    for rid, link in sorted(links(state, thread).items()):
        is_shared, step = shared(state, thread, state.records[rid])
        out[rid] = {"record": rid, "owner": state.thread_owner(thread), "link": link.as_json(),
                    "shared": is_shared, "decided_by": step.as_json()}
    return out


def sync_status_rows(state: TenantState, key: str) -> Rows:
    mbx = state.mailboxes.get(key)
    if mbx is None:
        return {}
    return {key: {"mailbox": mbx.id, "user": mbx.user, "provider": mbx.provider,
                  "address": mbx.address, "status": mbx.status, "suspect": mbx.suspect,
                  "held_deletions": list(mbx.pending_deletions), "synced": mbx.synced,
                  "skipped": mbx.skipped, "rejected": mbx.rejected, "last_error": mbx.last_error,
                  "last_sync_at": mbx.last_sync_at.isoformat() if mbx.last_sync_at else None,
                  "credentials_set": mbx.credentials_set, "scope": mbx.scope}}


def threads_of_record(state: TenantState, record_id: str) -> set[str]:
    """Candidate threads for a record: those with one of its addresses, or manually linked."""
    record = state.records.get(record_id)
    if record is None:
        return set()
    out: set[str] = set()
    for address in state.record_addresses(record):
        out |= state.address_threads.get(address, set())
    out |= {t.id for t in state.threads.values() if record_id in t.manual}
    return out


def all_keys(state: TenantState, projection: str) -> Iterable[str]:
    if projection == "directory":
        return [f"user:{u}" for u in state.users] + [f"record:{r}" for r in state.records]
    if projection == "timeline":
        return list(state.records)
    if projection == "mailbox":
        return list(state.users)
    if projection in ("thread", "explain"):
        return list(state.threads)
    return list(state.mailboxes)


PROJECTIONS: dict[str, Callable[[TenantState, str], Rows]] = {
    "directory": directory_rows,
    "timeline": timeline_rows,
    "mailbox": mailbox_rows,
    "thread": thread_rows,
    "explain": explain_rows,
    "sync_status": sync_status_rows,
}
