"""Who could see a thread, and when (SPEC §7 auditor queries, V11).

Pure: folds one tenant's events with the command side's `evolve` and evaluates the visibility of
ONE thread for every user of the tenant. No I/O, no clocks; the caller reads the events.

- `ThreadScope` says which events a fold for thread T may skip without changing anything T's
  visibility depends on: message-level events of other threads (their folds touch only their
  own mailbox's messages, threads and counters; S14: a message id belongs to one thread of its
  mailbox), message events that change no one's view (labels, cursors, outbox acks...) and
  audit-only events. T's own messages and their deletions, users, mailboxes, records, settings
  and links are always folded, so the state is exact for T (not for the rest of the tenant).
- `decide_access(state, T)`: one decision per user (visible, rule, detail, record, event):
  O(users x linked records), the shared(owner, T, R) step computed once per record.
- `AccessHistory`: folds events in order and re-evaluates only after events that may change T's
  visibility, once per domain time (an `--at` answer sees every event of its time). Each change
  opens or closes an interval naming the event that did it: O(users x relevant events).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from domain import events as ev
from domain.state import EventRef, TenantState, Thread, evolve
from domain.visibility import access_reason_of, links, manager_chain, shared

# Events whose fold touches only their own mailbox's messages, threads, counters or cursor.
MAILBOX_LOCAL: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.MessageSynced, ev.EmailSent, ev.MessageUpdated, ev.MessageDeletedAtProvider,
    ev.MessageDeletionHeld, ev.MailboxDeletionsConfirmed, ev.MessageSkipped,
    ev.AttachmentRejected, ev.MailboxCursorAdvanced, ev.DeliverySkipped,
    ev.MailboxResyncStarted, ev.PushSubscriptionCreated, ev.PushSubscriptionRenewed,
    ev.PushSubscriptionEnded, ev.MessageDeletionRequested, ev.MessageReadRequested,
    ev.OutboundMailAcknowledged, ev.OutboundCopyMatched, ev.CredentialsRemoved,
})
# Events that change no state at all (rejections, recorded commands, dead letters).
AUDIT_ONLY: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.CommandRejected, ev.CommandHadNoEffect, ev.ContactSyncCommandRecorded,
    ev.ExternalContactChangeQueued, ev.ExternalContactChangeAcknowledged,
    ev.DeliveryDeadLettered, ev.DeadLetterReplayed,
    # L2: erases content that the log's reader already answers as erased; never decides access
    ev.UserContentErased,
})
# Mailbox-local events that cannot change whether anyone sees a thread of their mailbox.
_NO_VISIBILITY = frozenset({
    ev.MessageSkipped, ev.AttachmentRejected, ev.MailboxCursorAdvanced, ev.DeliverySkipped,
    ev.MailboxResyncStarted, ev.PushSubscriptionCreated, ev.PushSubscriptionRenewed,
    ev.PushSubscriptionEnded, ev.MessageReadRequested, ev.OutboundMailAcknowledged,
    ev.OutboundCopyMatched, ev.MessageUpdated, ev.MessageDeletionHeld, ev.CredentialsRemoved,
})
# The mailbox-local events that may change who sees a thread: its messages and their deletions.
THREAD_WRITERS = frozenset[type[ev.DomainEvent]]((ev.MessageSynced, ev.EmailSent))
MESSAGE_DELETIONS: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.MessageDeletedAtProvider, ev.MessageDeletionRequested, ev.MailboxDeletionsConfirmed})
assert MAILBOX_LOCAL - _NO_VISIBILITY == THREAD_WRITERS | MESSAGE_DELETIONS
# Folded whole for every thread: users, mailboxes, records, settings, links, marks.
TENANT_WIDE: frozenset[type[ev.DomainEvent]] = frozenset(ev.EVENT_TYPES) - MAILBOX_LOCAL \
    - AUDIT_ONLY
_STATUS = {ev.UserAdded: "added", ev.UserDeactivated: "deactivated",
           ev.UserReactivated: "reactivated", ev.UserDeleted: "deleted"}


def _ref(event: ev.DomainEvent, seq: int) -> EventRef:
    return EventRef(seq, type(event).__name__, event.occurred_at, event.actor)


class ThreadScope:
    """Which events a fold for `thread` may skip. `mailbox`: the thread's mailbox when known
    (then only the thread's own message events are folded), else None (fold them all).
    One scope per fold: it remembers the thread's message ids to admit their deletions."""

    def __init__(self, thread: str, mailbox: str | None) -> None:
        self.thread = thread
        self.mailbox = mailbox
        # the exact bytes of `"mailbox":"<id>"` / `"thread":"<id>"` in a stored event (orjson,
        # compact; the closing quote makes `mb1:t1` miss `mb1:t10`)
        self.mailbox_needle = orjson.dumps({"mailbox": mailbox})[1:-1] \
            if mailbox is not None else None
        self._thread_needle = orjson.dumps({"thread": thread})[1:-1]
        self._messages: set[str] = set()

    def keep_stored(self, kind: type[ev.DomainEvent], state: bytes) -> bool:
        """Before decoding: False only for events that certainly do not matter. A stored event
        without the needle has another mailbox or thread (the needle is its exact field)."""
        if kind in AUDIT_ONLY:
            return False
        if kind not in MAILBOX_LOCAL or self.mailbox_needle is None:
            return True
        if kind in THREAD_WRITERS:
            return self._thread_needle in state
        if kind in MESSAGE_DELETIONS:
            return self.mailbox_needle in state
        return False

    def selection(self) -> tuple[frozenset[type[ev.DomainEvent]], frozenset[type[ev.DomainEvent]],
                                 bytes, frozenset[type[ev.DomainEvent]], str] | None:
        """What `keep_stored` keeps, for a store that selects before reading: (classes kept
        whole, classes kept when their bytes hold the mailbox needle, that needle, classes kept
        when their `thread` is this thread, the thread). None: keep every message event."""
        if self.mailbox_needle is None:
            return None
        return TENANT_WIDE, MESSAGE_DELETIONS, self.mailbox_needle, THREAD_WRITERS, self.thread

    def admit(self, event: ev.DomainEvent) -> ev.DomainEvent | None:
        """The event as the fold for this thread should see it, or None to skip it."""
        kind = type(event)
        if kind in AUDIT_ONLY:
            return None
        if self.mailbox is None:
            return event
        if kind in MAILBOX_LOCAL:
            return self._admit_message_event(event)
        if isinstance(event, ev.ThreadMarked):
            if self.thread not in event.threads:
                return None
            return event.model_copy(update={"threads": [self.thread]})
        if isinstance(event, ev.ThreadLinked | ev.ThreadUnlinked) \
                and event.thread != self.thread:
            return None
        return event

    def _admit_message_event(self, event: ev.DomainEvent) -> ev.DomainEvent | None:
        if isinstance(event, ev.MessageSynced | ev.EmailSent):
            if event.thread != self.thread:
                return None
            self._messages.add(event.message.id)
            return event
        if getattr(event, "mailbox", None) != self.mailbox:
            return None
        if isinstance(event, ev.MessageDeletedAtProvider | ev.MessageDeletionRequested):
            return event if event.id in self._messages else None
        if isinstance(event, ev.MailboxDeletionsConfirmed):
            ids = [i for i in event.ids if i in self._messages]
            return event.model_copy(update={"ids": ids}) if ids else None
        return None  # labels, cursors, outbox acks...: nobody's view of the thread changes

    def relevant(self, event: ev.DomainEvent) -> bool:
        """May this (admitted) event change who sees the thread?"""
        kind = type(event)
        if kind in _NO_VISIBILITY:
            return False
        if isinstance(event, ev.MessageSynced | ev.EmailSent):
            return event.thread == self.thread
        return True


@dataclass(frozen=True)
class Decision:
    visible: bool
    rule: str
    detail: str
    record: str | None = None
    event: EventRef | None = None

    def as_json(self) -> dict[str, Any]:
        return {"visible": self.visible, "rule": self.rule, "detail": self.detail,
                "record": self.record, "event": self.event.as_json() if self.event else None}


@dataclass
class Refs:
    """Events the state does not name but explanations do: each user's last lifecycle event."""

    status: dict[str, EventRef] = field(default_factory=dict)

    def see(self, event: ev.DomainEvent, seq: int) -> None:
        if type(event) in _STATUS:
            self.status[getattr(event, "user")] = _ref(event, seq)  # noqa: B009


def _live(state: TenantState, thread: Thread) -> bool:
    return any(not state.messages[(thread.mailbox, m)].deleted for m in thread.messages)


def decide_access(state: TenantState, thread_id: str, refs: Refs | None = None
                  ) -> dict[str, Decision]:
    """For every user of the tenant: may they see the thread now (the thread query answers,
    V8/V9 with L1/L2), by which rule, decided by which event."""
    refs = refs or Refs()
    users = state.users
    thread = state.threads.get(thread_id)
    out: dict[str, Decision] = {}
    if thread is None:
        return {u: Decision(False, "V8", "the thread does not exist at this time")
                for u in users}
    owner = state.thread_owner(thread)
    owner_doc = users[owner]
    live = _live(state, thread)
    # per linked record, once: the link, the owner's managers, shared(owner, T, R)
    per_record = []
    if live and owner_doc.status != "deleted":
        for rid in sorted(links(state, thread)):
            rec = state.records[rid]
            outcome, step = shared(state, thread, rec)
            per_record.append((rid, rec, manager_chain(state, rec.owner), outcome, step))
    for uid in sorted(users):
        user = users[uid]
        if user.status != "active":
            rule = "L1" if user.status == "deactivated" else "L2"
            out[uid] = Decision(False, rule, f"{uid} is {user.status}", None,
                                refs.status.get(uid))
            continue
        if owner_doc.status == "deleted":
            out[uid] = Decision(False, "L2", f"thread owner {owner} was deleted", None,
                                refs.status.get(owner))
            continue
        if not live:
            out[uid] = Decision(False, "S12", "every message of the thread was deleted")
            continue
        if uid == owner:
            out[uid] = Decision(True, "V9", f"{uid} owns mailbox {thread.mailbox}")
            continue
        best: Decision | None = None
        for rid, rec, managers, outcome, step in per_record:
            reason = access_reason_of(uid, user.role, user.status, rec.owner,
                                      rec.collaborators, managers)
            if reason is None:
                if best is None:
                    best = Decision(False, "V8", f"{uid} has no access to {rid}", rid,
                                    rec.owner_ref)
                continue
            if outcome:
                best = Decision(True, step.rule, f"{reason}; {step.detail}", rid, step.event)
                break
            if best is None or best.rule == "V8":
                best = Decision(False, step.rule, f"{reason}; {step.detail}", rid, step.event)
        if best is None:
            best = Decision(False, "V9", f"only {owner} sees this thread: it is linked to no "
                                         "record", None, None)
        out[uid] = best
    return out


@dataclass
class Interval:
    start: datetime
    rule: str
    record: str | None
    opened_by: EventRef | None
    end: datetime | None = None
    closed_by: EventRef | None = None
    closed_rule: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat() if self.end else None,
                "rule": self.rule, "record": self.record,
                "opened_by": self.opened_by.as_json() if self.opened_by else None,
                "closed_by": self.closed_by.as_json() if self.closed_by else None,
                "closed_rule": self.closed_rule}


class AccessHistory:
    """Folds a tenant's events (in stream order) and records, per user, the intervals during
    which the thread was visible. Feed every event the scope keeps; call `finish()` at the end."""

    def __init__(self, tenant: str, scope: ThreadScope) -> None:
        self.state = TenantState(tenant, index_rfc=False)
        self.scope = scope
        self.refs = Refs()
        self.intervals: dict[str, list[Interval]] = {}
        self._open: dict[str, Interval] = {}
        self._pending: tuple[datetime, EventRef] | None = None  # a relevant event not evaluated
        self.evaluations = 0

    def feed(self, seq: int, event: ev.DomainEvent) -> None:
        admitted = self.scope.admit(event)
        if self._pending is not None and event.occurred_at != self._pending[0]:
            self._evaluate()  # the previous domain time is complete
        if admitted is None:
            return
        evolve(self.state, admitted, seq)
        self.refs.see(admitted, seq)
        if self.scope.relevant(admitted):
            self._pending = (admitted.occurred_at, _ref(admitted, seq))

    def feed_all(self, events: Iterable[tuple[int, ev.DomainEvent]]) -> AccessHistory:
        for seq, event in events:
            self.feed(seq, event)
        return self.finish()

    def finish(self) -> AccessHistory:
        if self._pending is not None:
            self._evaluate()
        return self

    def _evaluate(self) -> None:
        assert self._pending is not None
        when, ref = self._pending
        self._pending = None
        if self.scope.thread not in self.state.threads and not self._open:
            return
        self.evaluations += 1
        for uid, decision in decide_access(self.state, self.scope.thread, self.refs).items():
            current = self._open.get(uid)
            if decision.visible and current is None:
                opened = Interval(when, decision.rule, decision.record, ref)
                self._open[uid] = opened
                self.intervals.setdefault(uid, []).append(opened)
            elif not decision.visible and current is not None:
                current.end, current.closed_by, current.closed_rule = when, ref, decision.rule
                del self._open[uid]

    def answer(self) -> list[dict[str, Any]]:
        """Per user of the tenant (sorted): the intervals, oldest first (open: `to` null)."""
        users = self.state.users
        return [{"user": u, "role": users[u].role, "status": users[u].status,
                 "intervals": [i.as_json() for i in self.intervals.get(u, [])]}
                for u in sorted(users)]


def access_answer(state: TenantState, thread_id: str, refs: Refs) -> list[dict[str, Any]]:
    """The access query's answer from a state folded up to the time asked."""
    return [{"user": u, "role": state.users[u].role, "status": state.users[u].status,
             **d.as_json()} for u, d in decide_access(state, thread_id, refs).items()]


def fold_until(tenant: str, scope: ThreadScope, events: Iterable[tuple[int, ev.DomainEvent]],
               at: datetime | None) -> tuple[TenantState, Refs]:
    """The state for `scope`'s thread after every event up to domain time `at` (None: all)."""
    state = TenantState(tenant, index_rfc=False)
    refs = Refs()
    for seq, event in events:
        if at is not None and event.occurred_at > at:
            break
        admitted = scope.admit(event)
        if admitted is not None:
            evolve(state, admitted, seq)
            refs.see(admitted, seq)
    return state, refs
