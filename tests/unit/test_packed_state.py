"""The packed tenant state (issue #15: numbers instead of text, threads as rows) answers every
query of the mail state as plain dicts and lists folded from the same history do."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain import events as ev
from domain.message_table import Message
from domain.state import TenantState, evolve
from domain.tenant import addresses, utc_iso

MAILBOXES = {"mb0": "u0", "mb1": "u1"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
texts = st.text(max_size=8)


@dataclass
class RefThread:
    mailbox: str
    created_seq: int
    crm_initiated: bool
    messages: list[str] = field(default_factory=list)
    participants: tuple[str, ...] = ()
    flag: Any = None
    manual: dict[str, Any] | None = None


@dataclass
class Reference:
    """The mail state as the dicts it was before packing (the rules of `domain.mail_folds`)."""

    messages: dict[tuple[str, str], Message] = field(default_factory=dict)
    threads: dict[str, RefThread] = field(default_factory=dict)
    mailbox_threads: dict[str, list[str]] = field(default_factory=dict)
    rfc: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def sync(self, e: ev.MessageSynced, seq: int) -> None:
        m = e.message
        thread = self.threads.get(e.thread)
        if thread is None:
            thread = self.threads[e.thread] = RefThread(e.mailbox, seq, e.crm_initiated)
            self.mailbox_threads.setdefault(e.mailbox, []).append(e.thread)
        thread.messages.append(m.id)
        message = self.messages[(e.mailbox, m.id)] = Message(
            m.id, e.thread, m.message_id, addresses([m.from_, *m.to]), m.subject,
            utc_iso(m.sent_at), tuple(m.labels), m.read, m.delivery_status)
        if m.message_id:
            self.rfc.setdefault((e.mailbox, m.message_id), (e.mailbox, m.id))
        new = tuple(a for a in message.participants if a not in thread.participants)
        thread.participants += new

    def delete(self, mailbox: str, mids: list[str]) -> None:
        """Mark deleted, then recount the threads that lost a live message."""
        threads = set()
        for mid in mids:
            msg = self.messages[(mailbox, mid)]
            if not msg.deleted:
                self.messages[(mailbox, mid)] = replace(msg, deleted=True)
                threads.add(msg.thread)
        for thread in (self.threads[t] for t in sorted(threads)):
            seen: dict[str, None] = {}
            for i in thread.messages:
                if not (live := self.messages[(thread.mailbox, i)]).deleted:
                    seen.update(dict.fromkeys(live.participants))
            thread.participants = tuple(seen)

    def rfc_thread(self, mailbox: str, rfc: str) -> str | None:
        key = self.rfc.get((mailbox, rfc))
        return None if key is None else self.messages[key].thread


@st.composite
def histories(draw: st.DrawFn) -> list[ev.DomainEvent]:
    """Syncs (a provider id may come again, in another thread), updates, deletions, marks,
    manual links and an erasure, over two mailboxes."""
    ids = [f"m{i}" for i in range(draw(st.integers(1, 8)))]
    content = {i: dict(rfc=draw(st.none() | st.sampled_from(["<a@x>", "<b@x>", "c", "<d@y@z>"])
                                | texts),
                       people=draw(st.lists(st.sampled_from(["a@x", "B@x", "c@y", "é@z"]) | texts,
                                            min_size=1, max_size=3)),
                       subject=draw(texts), labels=draw(st.lists(texts, max_size=2)),
                       status=draw(st.none() | st.sampled_from(["queued", "sent", ""])),
                       sent=T0 + timedelta(microseconds=draw(st.integers(-10**12, 10**12))))
               for i in ids}
    meta = {"tenant": "t", "actor": "system", "occurred_at": T0, "correlation_id": "c"}
    out: list[ev.DomainEvent] = [
        ev.MailboxConnected(**meta, mailbox=mbx, user=user, provider="gmail",
                            address=f"{user}@corp", scope={"mode": "all"}, backfill_days=30,
                            credentials_set=True) for mbx, user in MAILBOXES.items()]
    for _ in range(draw(st.integers(0, 25))):
        mbx, mid = draw(st.sampled_from(sorted(MAILBOXES))), draw(st.sampled_from(ids))
        thread = f"{mbx}:t{draw(st.integers(0, 3))}"
        kind = draw(st.sampled_from(["sync", "sync", "sync", "update", "delete", "confirm",
                                     "mark", "link", "erase"]))
        c = content[mid]
        if kind == "sync":
            msg = ev.MailMessage(id=mid, message_id=c["rfc"], from_=c["people"][0],
                                 to=c["people"][1:], subject=c["subject"], sent_at=c["sent"],
                                 labels=c["labels"], delivery_status=c["status"],
                                 read=draw(st.booleans()))
            out.append(ev.MessageSynced(**meta, mailbox=mbx, thread=thread, message=msg,
                                        crm_initiated=draw(st.booleans())))
        elif kind == "update":
            out.append(ev.MessageUpdated(**meta, mailbox=mbx, id=mid,
                                         labels=draw(st.none() | st.lists(texts, max_size=2)),
                                         read=draw(st.none() | st.booleans()),
                                         delivery_status=draw(st.none() | texts)))
        elif kind == "delete":
            out.append(ev.MessageDeletedAtProvider(**meta, mailbox=mbx, id=mid))
        elif kind == "confirm":
            out.append(ev.MailboxDeletionsConfirmed(**meta, mailbox=mbx, applied=True,
                                                    ids=draw(st.lists(st.sampled_from(ids)))))
        elif kind == "mark":
            out.append(ev.ThreadMarked(**meta, user=MAILBOXES[mbx], threads=[thread],
                                       shared=draw(st.booleans())))
        elif kind == "link":
            out.append(ev.ThreadLinked(**meta, user=MAILBOXES[mbx], thread=thread, record="r1"))
        else:
            out.append(ev.UserContentErased(**meta, user=MAILBOXES[mbx]))
    return out


def _fold(history: list[ev.DomainEvent]) -> tuple[TenantState, Reference]:
    state, ref = TenantState("t"), Reference()
    for seq, event in enumerate(history, 1):
        e = event
        if isinstance(e, ev.MessageUpdated | ev.MessageDeletedAtProvider) \
                and (e.mailbox, e.id) not in ref.messages:
            continue  # the rules never emit these for an unknown message
        if isinstance(e, ev.MailboxDeletionsConfirmed):
            e = e.model_copy(update={"ids": [i for i in e.ids if (e.mailbox, i) in ref.messages]})
        named = e.threads if isinstance(e, ev.ThreadMarked) \
            else [e.thread] if isinstance(e, ev.ThreadLinked) else []
        if any(t not in ref.threads for t in named):
            continue
        evolve(state, e, seq)
        _apply(ref, e, seq)
    return state, ref


def _apply(ref: Reference, e: ev.DomainEvent, seq: int) -> None:
    if isinstance(e, ev.MessageSynced):
        ref.sync(e, seq)
    elif isinstance(e, ev.MessageUpdated):
        msg = ref.messages[(e.mailbox, e.id)]
        ref.messages[(e.mailbox, e.id)] = replace(
            msg, labels=msg.labels if e.labels is None else tuple(e.labels),
            read=msg.read if e.read is None else e.read,
            delivery_status=msg.delivery_status if e.delivery_status is None
            else e.delivery_status)
    elif isinstance(e, ev.MessageDeletedAtProvider):
        ref.delete(e.mailbox, [e.id])
    elif isinstance(e, ev.MailboxDeletionsConfirmed):
        ref.delete(e.mailbox, e.ids)
    elif isinstance(e, ev.ThreadMarked):
        ref.threads[e.threads[0]].flag = e.shared
    elif isinstance(e, ev.ThreadLinked):
        ref.threads[e.thread].manual = {e.record: True}
    elif isinstance(e, ev.UserContentErased):
        for mbx in [m for m, user in MAILBOXES.items() if user == e.user]:
            for tid in ref.mailbox_threads.get(mbx, []):
                for mid in ref.threads[tid].messages:
                    ref.messages[(mbx, mid)] = replace(ref.messages[(mbx, mid)],
                                                       subject=ev.ERASED)


def _same_answers(state: TenantState, ref: Reference) -> None:
    assert dict(state.messages.items()) == ref.messages  # (listed mailbox by mailbox)
    assert len(state.messages) == len(ref.messages)
    assert list(state.threads) == list(ref.threads) and len(state.threads) == len(ref.threads)
    for tid, want in ref.threads.items():
        got = state.threads[tid]
        assert (got.id, got.mailbox, got.created_seq, got.crm_initiated, got.messages,
                got.participants) == (tid, want.mailbox, want.created_seq, want.crm_initiated,
                                      want.messages, want.participants)
        assert (None if got.flag is None else got.flag[0]) == want.flag
        assert ({r: v[0] for r, v in got.manual.items()} if got.manual else None) == want.manual
        assert state.threads.get(tid) == got and tid in state.threads
    for mbx in MAILBOXES:
        assert state.mailbox_threads.get(mbx, []) == ref.mailbox_threads.get(mbx, [])
        for rfc in ["<a@x>", "<b@x>", "c", "<d@y@z>", ""] + [m.rfc_id or "" for m in
                                                          ref.messages.values()]:
            assert state.rfc_index.get((mbx, rfc)) == ref.rfc_thread(mbx, rfc)
            assert ((mbx, rfc) in state.rfc_index) == (ref.rfc_thread(mbx, rfc) is not None)
    assert "mb0:nope" not in state.threads and state.threads.get("mb0:nope") is None


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_packed_state_answers_as_the_plain_fold_on_any_history(
        history: list[ev.DomainEvent]) -> None:
    state, ref = _fold(history)
    _same_answers(state, ref)
    copy = pickle.loads(pickle.dumps(state, protocol=5))  # a snapshot's copy
    _same_answers(copy, ref)
    assert copy.threads == state.threads and copy.messages == state.messages


def test_a_thread_lists_a_message_of_another_mailbox_or_one_synced_again() -> None:
    meta = {"tenant": "t", "actor": "system", "occurred_at": T0, "correlation_id": "c"}
    state = TenantState("t")
    history: list[ev.DomainEvent] = [
        ev.MailboxConnected(**meta, mailbox=m, user=u, provider="gmail", address=f"{u}@corp",
                            scope={"mode": "all"}, backfill_days=30, credentials_set=True)
        for m, u in MAILBOXES.items()]
    for mbx, mid in [("mb0", "a"), ("mb1", "b"), ("mb0", "a"), ("mb0", "c")]:
        msg = ev.MailMessage(id=mid, from_="x@y", to=[], subject="s", sent_at=T0)
        history.append(ev.MessageSynced(**meta, mailbox=mbx, thread="mb0:t", message=msg))
    for seq, e in enumerate(history, 1):
        evolve(state, e, seq)
    assert state.threads["mb0:t"].messages == ["a", "b", "a", "c"]
