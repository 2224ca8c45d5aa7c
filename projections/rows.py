"""The rows of each projection (SPEC E3).

Rows are grouped by key. Keys are small on purpose (a user, a record, a record-and-thread pair, a
thread, a message, a mailbox) so that one event rewrites few rows: `rows(state, key)` returns the
complete rows of a key as a pure function of tenant state. Decisions that depend on facts which
change for many threads at once — the record's owner and collaborators, the thread owner's
global level (V3, V7), the viewer's status and place in the hierarchy (V8) — are not copied into
thread rows: the rows keep the *basis* of the decision and queries combine it with the user and
record rows. That keeps owner changes, level changes and hierarchy changes O(1) in rows.

Message bodies are never kept in tenant state: the `message` projection's rows come straight from
the events that carry them (`event_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain import events as ev
from domain.message_table import Message
from domain.state import Push, TenantState, Thread, utc_iso
from domain.visibility import Step, links, manager_chain, shared

Doc = dict[str, Any]
Rows = dict[str, Doc]  # row key -> document
SEP = "\x1f"  # joins the parts of a compound key
# L2: whose key seals a content row that does not name its owner (message rows); the view store
# takes it out (adapters.views.seal), so answers never show it
OWNER_FIELD = "_owner"


def sent_at(m: Message) -> str:
    return m.sent_at


def ordered_messages(state: TenantState, thread: Thread) -> list[Message]:
    """The thread's live messages by send time (ties: in the thread's order: the sort is
    stable and `live_messages` keeps that order)."""
    return sorted(state.live_messages(thread), key=sent_at)


Ordering = Callable[[TenantState, Thread], list[Message]]  # a thread's live messages, ordered


def _live_thread(state: TenantState, thread_id: str, ordered: Ordering
                 ) -> tuple[Thread, list[Message]] | None:
    """The thread and its ordered live messages if it shows anywhere: threads of deleted users
    leave every view (L2), empty threads show nowhere. (Each message is unpacked once: the
    message table packs them, and this runs for every thread a time group touches.)"""
    thread = state.threads.get(thread_id)
    if thread is None or state.users[state.thread_owner(thread)].status == "deleted":
        return None
    messages = ordered(state, thread)
    return (thread, messages) if messages else None


def basis(state: TenantState, thread: Thread, record_id: str) -> Doc:
    """What decides shared(owner(T), T, R): V1/V2 outcomes are stored; V3 depends on the owner's
    level and the record's owner/collaborators, so only the rule is stored (read at query time)."""
    outcome, step = shared(state, thread, state.records[record_id])
    if step.rule == "V3":
        return {"rule": "V3", "type": state.records[record_id].type}
    return {"rule": step.rule, "shared": outcome, "step": step.as_json()}


def directory_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    kind, _, ident = key.partition(":")
    if kind == "user":
        user = state.users.get(ident)
        if user is None:
            return {}
        levels = {t: {"level": lv, "event": ref.as_json()} for t, (lv, ref) in user.levels.items()}
        return {ident: {"user": user.id, "email": user.email, "role": user.role,
                        "manager": user.manager, "status": user.status,
                        "managers": manager_chain(state, user.id), "levels": levels}}
    record = state.records.get(ident)
    if record is None:
        return {}
    return {ident: {"record": record.id, "type": record.type, "name": record.name,
                    "owner": record.owner, "emails": sorted(state.record_addresses(record)),
                    "collaborators": sorted(record.collaborators),
                    "owner_event": record.owner_ref.as_json() if record.owner_ref else None,
                    # C9: the contact this one is merged into (its own merge/unmerge rewrites it)
                    "merged_into": state.contacts.merged_into.get(ident)}}


@dataclass
class ThreadFacts:
    """Everything the thread-derived rows need, computed once per thread per batch."""

    thread: Thread
    owner: str
    messages: list[Message]
    links: dict[str, Step]
    bases: dict[str, Doc]


Cache = dict[str, "ThreadFacts | None"]


def thread_facts(state: TenantState, thread_id: str, cache: Cache,
                 ordered: Ordering = ordered_messages) -> ThreadFacts | None:
    """`ordered`: where the thread's ordered live messages come from (`thread_memo`)."""
    if thread_id not in cache:
        found = _live_thread(state, thread_id, ordered)
        if found is None:
            cache[thread_id] = None
        else:
            thread, messages = found
            linked = links(state, thread)
            cache[thread_id] = ThreadFacts(thread, state.thread_owner(thread), messages, linked,
                                           {r: basis(state, thread, r) for r in sorted(linked)})
    return cache[thread_id]


def timeline_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    """Key `record SEP thread`: the thread as linked to the record, with its messages' ids."""
    record_id, _, thread_id = key.partition(SEP)
    facts = thread_facts(state, thread_id, cache)
    if facts is None or record_id not in facts.links:
        return {}
    msgs = facts.messages
    return {"t": {"thread": thread_id, "mailbox": facts.thread.mailbox, "owner": facts.owner,
                  **_subject(msgs[0].subject), "basis": facts.bases[record_id],
                  "messages": [[m.rfc_id, sent_at(m)] for m in msgs]}}


def mailbox_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    """Key `user SEP thread`: a thread of the user's mailboxes (V9)."""
    user_id, _, thread_id = key.partition(SEP)
    facts = thread_facts(state, thread_id, cache)
    if facts is None or facts.owner != user_id:
        return {}
    msgs = facts.messages
    return {"t": {"thread": thread_id, "mailbox": facts.thread.mailbox, "owner": user_id,
                  **_subject(msgs[0].subject), "messages": len(msgs),
                  "last_activity": max(sent_at(m) for m in msgs),
                  "labels": sorted({label for m in msgs for label in m.labels}),
                  "records": facts.bases}}


def thread_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    """Key `thread`: owner, linked records with their bases, and each message's changing state
    (the content is in the `message` projection)."""
    facts = thread_facts(state, key, cache)
    if facts is None:
        return {}
    msgs = [{"id": m.id, "read": m.read, "labels": m.labels,
             "delivery_status": m.delivery_status} for m in facts.messages]
    return {"t": {"thread": key, "mailbox": facts.thread.mailbox, "owner": facts.owner,
                  "records": facts.bases, "messages": msgs}}


def explain_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    """Key `thread`: per linked record, how it is linked and what decides its padlock (V11)."""
    facts = thread_facts(state, key, cache)
    if facts is None:
        return {}
    return {rid: {"record": rid, "owner": facts.owner, "link": link.as_json(),
                  "basis": facts.bases[rid]}
            for rid, link in sorted(facts.links.items())}


def sync_status_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    mbx = state.mailboxes.get(key)
    if mbx is None:
        return {}
    return {key: {"mailbox": mbx.id, "user": mbx.user, "provider": mbx.provider,
                  "address": mbx.address, "status": mbx.status, "suspect": mbx.suspect,
                  "held_deletions": list(mbx.pending_deletions), "synced": mbx.synced,
                  "skipped": mbx.skipped, "rejected": mbx.rejected,
                  # L2: an error may quote a refused attachment's name (content): a deleted
                  # user's is erased (every store agrees, whether it seals rows or not)
                  "last_error": None if _deleted(state, mbx.user) else mbx.last_error,
                  "last_sync_at": mbx.last_sync_at.isoformat() if mbx.last_sync_at else None,
                  "credentials_set": mbx.credentials_set, "scope": mbx.scope,
                  "cursor": mbx.cursor,
                  "cursor_at": mbx.cursor_at.isoformat() if mbx.cursor_at else None,
                  "resync_since": mbx.resync_since.isoformat() if mbx.resync_since else None,
                  "resync_reason": mbx.resync_reason, "push": _push(mbx.push)}}


def _deleted(state: TenantState, user: str) -> bool:
    found = state.users.get(user)
    return found is not None and found.status == "deleted"


def _push(push: Push | None) -> Doc | None:
    if push is None:
        return None
    return {"subscription_id": push.subscription_id, "resource": push.resource,
            "expires_at": utc_iso(push.expires_at), "created_at": utc_iso(push.created_at),
            "renewed_at": utc_iso(push.renewed_at) if push.renewed_at else None}


def _subject(subject: str) -> Doc:
    """L2: an erased subject answers as `"subject": null, "erased": true`."""
    return {"subject": None, "erased": True} if subject == ev.ERASED else {"subject": subject}


def _content(msg: ev.MailMessage, refused: list[ev.RefusedAttachment] | None = None) -> Doc:
    """The message's content as the thread answer shows it: its RFC Message-ID and its
    attachments (name, size, content type), the ones S8 refused with `refused` and `reason`.
    Erased content (L2) answers `"subject": null, "body": null, "erased": true` and no names."""
    erased = msg.subject == ev.ERASED
    attachments: list[Doc] = [{"name": None if erased else a.name, "size": a.size,
                               "content_type": a.content_type} for a in msg.attachments]
    attachments += [{"name": None if erased else a.name, "size": a.size,
                     "content_type": a.content_type, "refused": True,
                     "reason": None if erased else a.reason} for a in refused or ()]
    text: Doc = ({"subject": None, "body": None, "erased": True} if erased
                 else {"subject": msg.subject, "body": msg.body})
    return {"id": msg.id, "message_id": msg.message_id, "from": msg.from_.lower(),
            "to": sorted({a.lower() for a in msg.to}),
            "cc": sorted({a.lower() for a in msg.cc}), **text,
            "sent_at": utc_iso(msg.sent_at), "attachments": attachments}


def creates_message(state: TenantState, e: ev.DomainEvent) -> bool:
    """The event (judged before it is folded) writes the first rows a `message` key ever has."""
    return isinstance(e, ev.MessageSynced | ev.EmailSent) \
        and (e.mailbox, e.message.id) not in state.messages


def event_rows(state: TenantState, e: ev.DomainEvent) -> dict[str, Rows]:
    """Rows of the `message` projection an event writes ({} deletes), judged after the event."""
    if isinstance(e, ev.MessageSynced | ev.EmailSent):
        refused = e.refused if isinstance(e, ev.MessageSynced) else None
        owner = state.mailboxes[e.mailbox].user
        return {f"{e.thread}{SEP}{e.message.id}": {
            "m": {**_content(e.message, refused), OWNER_FIELD: owner}}}
    if isinstance(e, ev.MessageDeletedAtProvider | ev.MessageDeletionRequested):
        return {f"{state.messages[(e.mailbox, e.id)].thread}{SEP}{e.id}": {}}
    if isinstance(e, ev.MailboxDeletionsConfirmed) and e.applied:
        return {f"{state.messages[(e.mailbox, i)].thread}{SEP}{i}": {} for i in e.ids}
    if isinstance(e, ev.UserDeleted):  # L2: every message of the user's mailboxes goes
        out: dict[str, Rows] = {}
        for mbx in state.mailboxes.values():
            if mbx.user == e.user:
                for tid in state.mailbox_threads.get(mbx.id, []):
                    for mid in state.threads[tid].messages:
                        out[f"{tid}{SEP}{mid}"] = {}
        return out
    return {}


def contact_rows(state: TenantState, key: str, cache: Cache) -> Rows:
    """Key `record`: a contact's merge state (C8-C10): whom it is merged into, the contacts
    merged into it, its external links and theirs (active or detached), every field's current
    value with its source and modification time, the older values kept as custom fields, and
    every value ever seen."""
    record = state.records.get(key)
    if record is None or record.type != "contact":
        return {}
    cs = state.contacts
    values: dict[str, list[Doc]] = {}
    for claim in sorted(cs.all_claims(key), key=lambda c: (c.field, c.order)):
        values.setdefault(claim.field, []).append(claim.as_json())
    return {key: {
        "record": key, "merged_into": cs.merged_into.get(key),
        "merged": sorted(r for r in cs.subtree(key) if r != key),
        "links": [cs.links[k].as_json() for k in sorted(
            k for r in cs.subtree(key) for k in cs.by_record.get(r, ()))],
        "fields": {f: c.as_json() for f, c in sorted(cs.current.get(key, {}).items())},
        "kept": {n: {"field": c.field, **c.as_json()}
                 for n, c in sorted(cs.kept.get(key, {}).items())},
        "values": values}}


# Projections whose rows are a function of tenant state, by name.
STATE_ROWS: dict[str, Callable[[TenantState, str, Cache], Rows]] = {
    "directory": directory_rows,
    "timeline": timeline_rows,
    "mailbox": mailbox_rows,
    "thread": thread_rows,
    "explain": explain_rows,
    "sync_status": sync_status_rows,
    "contact": contact_rows,
}
# Every projection, in order: `message` is written straight from events (`event_rows`), because
# message bodies never enter tenant state.
PROJECTIONS: tuple[str, ...] = ("directory", "timeline", "mailbox", "thread", "message",
                                "explain", "sync_status", "contact")
