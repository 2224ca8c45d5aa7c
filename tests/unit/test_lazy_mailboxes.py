"""A command-side state whose mailboxes are folded when first touched (issue #15,
`domain.lazy_mailboxes`): every decision on it, loading the mailboxes a rule asks about, is the
decision on the whole state; it never answers for a mailbox it has not loaded; and once every
mailbox is loaded it equals the whole fold."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

import pytest
from histories import T0
from rulekit import CUSTOMER, msg, office, run, user
from rulekit import mailbox as connect
from test_command_state_without_content import DECIDED, TENANT, commands, label, outcome

from domain.commands import Command, parse_command
from domain.decide import decide, rejection_event
from domain.errors import MailboxNotLoaded, Rejection
from domain.events import DomainEvent, MailboxConnected
from domain.lazy_mailboxes import fold_lazily, lazy_state, load, scope, unloaded
from domain.state import TenantState, evolve

T = TypeVar("T")
Log = list[tuple[int, DomainEvent]]  # every event appended so far, with its number
MAILBOXES = ("mb0", "mb1", "mb2")  # history()'s


def waiting(s: TenantState) -> set[str]:
    found = unloaded(s)
    assert found is not None, "a lazy state"
    return found


def restart(log: Log) -> TenantState:
    """A lazy state as a process starting on `log` has it: every mailbox waits."""
    s = lazy_state(TENANT)
    for seq, event in log:
        fold_lazily(s, event, seq)
    return s


def load_all(s: TenantState, log: Log) -> None:
    for mailbox in sorted(waiting(s)):
        load(s, mailbox, log)
    assert not waiting(s)


def retrying(s: TenantState, log: Log, read: Callable[[], T], loads: Counter[str],
             kind: str) -> T:
    """`read()` on the lazy state `s`, loading the mailboxes it asks for until it answers."""
    mailboxes = waiting(s)
    for _ in range(len(mailboxes) + 2):
        try:
            return read()
        except MailboxNotLoaded as missing:
            names = set(missing.mailboxes) or set(mailboxes)
            assert names, "MailboxNotLoaded with every mailbox loaded"
            assert names <= mailboxes, f"{sorted(names)} are loaded: {sorted(mailboxes)} wait"
            for mailbox in sorted(names):
                load(s, mailbox, log)
            loads[kind] += 1
    pytest.fail(f"{kind}: still asks for mailboxes after {len(mailboxes) + 2} tries")


def lazy_outcome(s: TenantState, cmd: Command, log: Log, loads: Counter[str]
                 ) -> tuple[list[DomainEvent], tuple[str, ...] | None]:
    """`outcome` on a lazy state: the engine's decision and, for a refused command, its audit
    record (whose mailbox it names only if the state knows it), each read retried after a
    load."""
    at = cmd.at
    assert at is not None
    correlation_id = f"c{s.seq}"
    try:
        return retrying(s, log, lambda: decide(s, cmd, now=at, correlation_id=correlation_id),
                        loads, "decide"), None
    except Rejection as refused:
        rejection = refused
    record = retrying(s, log, lambda: rejection_event(
        s, cmd, rejection, now=at, correlation_id=correlation_id,
        actor=cmd.actor or "system:cli"), loads, "rejection_event")
    return [record], (type(rejection).__name__, rejection.cmd, rejection.field,
                      rejection.reason)


def test_every_decision_on_a_lazy_state_equals_the_whole_state() -> None:
    decided: Counter[str] = Counter()
    loads: Counter[str] = Counter()
    decisions = needed_a_load = with_mailboxes_unloaded = restarts = 0
    for seed in range(12):
        full = TenantState(TENANT, message_content=False)
        log: Log = []
        lazy = lazy_state(TENANT)
        when = random.Random(1000 + seed)
        next_restart = when.randint(3, 12)
        for count, (_, made, cmd) in enumerate(commands(seed, full), 1):
            if count == next_restart:  # a new process: every mailbox waits again
                load_all(lazy, log)
                assert lazy == full, (seed, count)
                lazy = restart(log)
                assert (lazy.seq, lazy.last_at) == (full.seq, full.last_at)
                assert waiting(lazy) == set(dict.keys(full.mailboxes))
                restarts += 1
                next_restart += when.randint(15, 40)
            before = loads.total()
            full_events, full_refusal = outcome(full, cmd)
            lazy_events, lazy_refusal = lazy_outcome(lazy, cmd, log, loads)
            assert lazy_refusal == full_refusal, (seed, made)
            assert [e.model_dump() for e in lazy_events] == \
                [e.model_dump() for e in full_events], (seed, made)
            decisions += 1
            needed_a_load += loads.total() > before
            with_mailboxes_unloaded += bool(waiting(lazy))
            decided.update(label(full, cmd, full_events))
            for event in full_events:
                seq = full.seq + 1
                evolve(full, event, seq)
                away = fold_lazily(lazy, event, seq)
                assert away <= waiting(lazy)
                log.append((seq, event))
            assert (lazy.seq, lazy.last_at, lazy.applied_commands) == \
                (full.seq, full.last_at, full.applied_commands)
        load_all(lazy, log)
        assert lazy == full, seed
    assert not DECIDED - set(decided), sorted(DECIDED - set(decided))
    assert restarts > 12
    assert 0 < needed_a_load < decisions, "no decision loaded a mailbox, or every one did"
    assert with_mailboxes_unloaded > 0, "every decision loaded every mailbox"
    assert loads["rejection_event"] > 0, "no audit record asked for its mailbox"


# -- accessors of a mailbox that is not loaded ------------------------------------------------


@cache
def story() -> tuple[TenantState, tuple[tuple[int, DomainEvent], ...]]:
    """A whole state and its events: history(9) with extra() commands (sends, acks, CRM
    deletions: mb0's and mb2's part of every structure holds entries)."""
    full = TenantState(TENANT, message_content=False)
    log: Log = []
    for _, _, cmd in commands(9, full):
        for event in outcome(full, cmd)[0]:
            evolve(full, event, full.seq + 1)
            log.append((full.seq, event))
    return full, tuple(log)


@dataclass(frozen=True)
class Keys:
    """Keys of one mailbox's part of the state, real ones where the whole state has any."""

    mailbox: str
    message: str
    thread: str
    rfc: str
    missing: str
    local: str
    sent: str
    deleted: str
    alias: str


def keys_of(full: TenantState, mailbox: str) -> Keys:
    def first(found: list[str], default: str) -> str:
        return sorted(found)[0] if found else default

    return Keys(
        mailbox,
        first([i for b, i in full.messages if b == mailbox], "nope"),
        first(full.mailbox_threads.get(mailbox, []), f"{mailbox}:nope"),
        first([m.rfc_id for (b, _), m in full.messages.items() if b == mailbox and m.rfc_id],
              "<nope@ext.test>"),
        first([x for b, x in full.missing_parents if b == mailbox], "<nope@ext.test>"),
        first([x for b, x in full.local_ids if b == mailbox], "nope"),
        first([x for b, x in full.sent_provider_ids if b == mailbox], "nope"),
        first([x for b, x in full.crm_deleted if b == mailbox], "nope"),
        first([a for a in full.thread_aliases if a.startswith(f"{mailbox}:")],
              f"{mailbox}:nope"))


Probe = Callable[[TenantState, Keys], object]
# name -> (asks about every mailbox, the read); iterations are sorted (a lazy state's
# mailboxes are in the order they were loaded)
PROBES: dict[str, tuple[bool, Probe]] = {
    "mailboxes[m]": (False, lambda s, k: s.mailboxes[k.mailbox]),
    "mailboxes.get(m)": (False, lambda s, k: s.mailboxes.get(k.mailbox)),
    "m in mailboxes": (False, lambda s, k: k.mailbox in s.mailboxes),
    "iter(mailboxes)": (True, lambda s, k: sorted(s.mailboxes)),
    "mailboxes.keys()": (True, lambda s, k: sorted(s.mailboxes.keys())),
    "mailboxes.values()": (True, lambda s, k: {m.id: m for m in s.mailboxes.values()}),
    "mailboxes.items()": (True, lambda s, k: dict(s.mailboxes.items())),
    "len(mailboxes)": (True, lambda s, k: len(s.mailboxes)),
    "messages.get": (False, lambda s, k: s.messages.get((k.mailbox, k.message))),
    "messages.get absent": (False, lambda s, k: s.messages.get((k.mailbox, "absent"))),
    "in messages": (False, lambda s, k: (k.mailbox, k.message) in s.messages),
    "messages[]": (False, lambda s, k: s.messages[(k.mailbox, k.message)]),
    "iter(messages)": (True, lambda s, k: sorted(s.messages)),
    "messages.items()": (True, lambda s, k: dict(s.messages.items())),
    "len(messages)": (True, lambda s, k: len(s.messages)),
    "threads.get": (False, lambda s, k: s.threads.get(k.thread)),
    "threads.get absent": (False, lambda s, k: s.threads.get(f"{k.mailbox}:absent")),
    "in threads": (False, lambda s, k: k.thread in s.threads),
    "threads[]": (False, lambda s, k: s.threads[k.thread]),
    "iter(threads)": (True, lambda s, k: sorted(s.threads)),
    "len(threads)": (True, lambda s, k: len(s.threads)),
    "rfc_index.get": (False, lambda s, k: s.rfc_index.get((k.mailbox, k.rfc))),
    "in rfc_index": (False, lambda s, k: (k.mailbox, k.rfc) in s.rfc_index),
    "mailbox_threads.get": (False, lambda s, k: s.mailbox_threads.get(k.mailbox)),
    "in mailbox_threads": (False, lambda s, k: k.mailbox in s.mailbox_threads),
    "missing_parents.get": (False, lambda s, k: s.missing_parents.get((k.mailbox, k.missing))),
    "in missing_parents": (False, lambda s, k: (k.mailbox, k.missing) in s.missing_parents),
    "local_ids.get": (False, lambda s, k: s.local_ids.get((k.mailbox, k.local))),
    "sent_provider_ids.get": (False, lambda s, k: s.sent_provider_ids.get((k.mailbox, k.sent))),
    "in sent_provider_ids": (False, lambda s, k: (k.mailbox, k.sent) in s.sent_provider_ids),
    "in crm_deleted": (False, lambda s, k: (k.mailbox, k.deleted) in s.crm_deleted),
    "thread_aliases.get": (False, lambda s, k: s.thread_aliases.get(k.alias)),
    "thread_aliases.get absent": (False, lambda s, k: s.thread_aliases.get(f"{k.mailbox}:x")),
    "outbound.get": (True, lambda s, k: s.outbound.get("any-request")),
    "in outbound": (True, lambda s, k: "any-request" in s.outbound),
    "iter(outbound)": (True, lambda s, k: sorted(s.outbound)),
    "crm_deleted iter": (True, lambda s, k: sorted(s.crm_deleted)),
    "local_ids.items()": (True, lambda s, k: dict(s.local_ids.items())),
}


def refusal(probe: Probe, s: TenantState, keys: Keys) -> frozenset[str]:
    with pytest.raises(MailboxNotLoaded) as raised:
        probe(s, keys)
    return raised.value.mailboxes


def test_the_story_holds_every_kind_of_key() -> None:
    full, _ = story()
    for keys in (keys_of(full, "mb0"), keys_of(full, "mb2")):
        assert "nope" not in (keys.message, keys.local, keys.sent, keys.deleted), keys
        assert not keys.thread.endswith("nope") and not keys.alias.endswith("nope"), keys
        assert keys.rfc != "<nope@ext.test>" and keys.missing != "<nope@ext.test>", keys
    assert full.outbound


@pytest.mark.parametrize("name", sorted(PROBES))
def test_a_lazy_state_never_answers_for_a_mailbox_it_has_not_loaded(name: str) -> None:
    every, probe = PROBES[name]
    full, log = story()
    lazy = restart(list(log))
    assert waiting(lazy) == set(MAILBOXES)
    mine, other = keys_of(full, "mb0"), keys_of(full, "mb2")
    assert refusal(probe, lazy, mine) == (frozenset() if every else {"mb0"})
    load(lazy, "mb0", log)
    if every:  # still unsure while any mailbox waits
        assert refusal(probe, lazy, mine) == frozenset()
    else:
        assert probe(lazy, mine) == probe(full, mine)
        assert refusal(probe, lazy, other) == {"mb2"}
    load_all(lazy, list(log))
    assert probe(lazy, mine) == probe(full, mine)
    assert probe(lazy, other) == probe(full, other)
    assert lazy == full


# -- the tenant-wide part of a mailbox's events ------------------------------------------------


def decided(s: TenantState, raw: dict[str, Any], minute: int) -> list[DomainEvent]:
    at = T0 + timedelta(days=30, minutes=minute)
    cmd = parse_command({**raw, "tenant": TENANT, "at": at.isoformat()})
    return decide(s, cmd, now=at, correlation_id=f"c{s.seq}")


def whole_of_story() -> tuple[TenantState, Log]:
    """The story's log (a copy) and its whole fold."""
    _, log_story = story()
    full = TenantState(TENANT, message_content=False)
    log = list(log_story)
    for seq, event in log:
        evolve(full, event, seq)
    return full, log


def test_e5_a_repeated_command_id_is_a_no_op_before_its_mailbox_is_loaded() -> None:
    full, log = whole_of_story()
    keyed: dict[str, Any] = {"cmd": "SyncMessage", "mailbox": "mb2", "command_id": "sync-e5-1",
             "message": {"id": "e5-1", "from": "x0@ext.test", "to": ["u3@acme.test"],
                         "subject": "again", "sent_at": T0.isoformat(), "labels": ["INBOX"]}}
    applied = decided(full, keyed, 1)
    assert [type(e).__name__ for e in applied] == ["MessageSynced"]
    for event in applied:
        evolve(full, event, full.seq + 1)
        log.append((full.seq, event))
    assert decided(full, keyed, 2) == []  # E5 on the whole state
    lazy = restart(log)
    assert decided(lazy, keyed, 2) == []  # E5, without loading mb2
    assert waiting(lazy) == set(MAILBOXES)
    # the same key folded while the mailbox waits (fold_lazily, not the restart's replay)
    message: dict[str, Any] = keyed["message"]
    again = {**keyed, "command_id": "sync-e5-2", "message": {**message, "id": "e5-2"}}
    for event in decided(full, again, 3):
        evolve(full, event, full.seq + 1)
        assert fold_lazily(lazy, event, full.seq) == {"mb2"}
        log.append((full.seq, event))
    assert decided(lazy, again, 4) == [] == decided(full, again, 4)
    assert waiting(lazy) == set(MAILBOXES)
    load_all(lazy, log)
    assert lazy == full


def test_a_mailbox_connected_after_the_start_waits_like_the_others() -> None:
    full, log = whole_of_story()
    lazy = restart(log)
    load(lazy, "mb1", log)  # one loaded, two waiting
    connect = {"cmd": "ConnectMailbox", "mailbox": "mb-new", "user": "u2", "provider": "gmail",
               "address": "U2.Other@Acme.test"}
    events = decided(full, connect, 1)
    assert [type(e) for e in events] == [MailboxConnected]
    for event in events:
        evolve(full, event, full.seq + 1)
        assert fold_lazily(lazy, event, full.seq) == {"mb-new"}
        log.append((full.seq, event))
    assert waiting(lazy) == {"mb0", "mb2", "mb-new"}
    assert "u2.other@acme.test" in lazy.user_addresses
    assert lazy.user_addresses == full.user_addresses
    assert lazy.mailbox_addresses == full.mailbox_addresses
    assert lazy.mailbox_addresses["mb-new"] == ("u2", "u2.other@acme.test")
    assert refusal(PROBES["mailboxes[m]"][1], lazy, keys_of(full, "mb-new")) == {"mb-new"}
    assert (lazy.seq, lazy.last_at) == (full.seq, full.last_at)
    load(lazy, "mb-new", log)
    assert lazy.mailboxes["mb-new"] == full.mailboxes["mb-new"]
    assert lazy.mailbox_threads.get("mb-new") == full.mailbox_threads.get("mb-new")
    load_all(lazy, log)
    assert lazy == full


def test_a_thread_marked_in_several_mailboxes_is_folded_for_each_as_it_loads() -> None:
    full = TenantState(TENANT, message_content=False)
    log: Log = []

    def step(cmd: dict[str, Any]) -> list[DomainEvent]:
        first = full.seq + 1
        events = run(full, cmd)
        log.extend(enumerate(events, first))
        return events

    for cmd in [*office(), connect("mb-ann2", "ann", "ann2@acme.test"),
                msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1"),
                msg("mb-ann2", "m2", CUSTOMER, ["ann2@acme.test"], thread_id="t2")]:
        step(cmd)
    both = ["mb-ann:t1", "mb-ann2:t2"]
    lazy = restart(log)
    load(lazy, "mb-ann", log)
    (marked,) = step({"cmd": "MarkThreadShared", "user": "ann", "threads": both})
    assert fold_lazily(lazy, marked, full.seq) == {"mb-ann2"}  # folded for mb-ann now
    assert lazy.threads["mb-ann:t1"] == full.threads["mb-ann:t1"]
    assert lazy.threads["mb-ann:t1"].flag is not None
    load(lazy, "mb-ann2", log)  # and for mb-ann2 when it loads
    assert lazy.threads["mb-ann2:t2"] == full.threads["mb-ann2:t2"]
    assert lazy == full
    later = restart(log)  # both waiting when it was folded
    for name, thread in (("mb-ann2", "mb-ann2:t2"), ("mb-ann", "mb-ann:t1")):
        load(later, name, log)
        assert later.threads[thread] == full.threads[thread]
    assert later == full


@pytest.mark.parametrize(("owner", "provider_thread"), [("a:b", "t1"), ("a", "b:t1")])
def test_a_thread_event_of_a_mailbox_whose_id_holds_a_colon_folds_with_its_mailbox(
        owner: str, provider_thread: str) -> None:
    """Thread `a:b:t1` is `a:b`'s thread `t1` or `a`'s thread `b:t1`: its events wait for
    both mailboxes, and are folded once, whichever is loaded last."""
    full = TenantState(TENANT, message_content=False)
    log: Log = []
    address = "ann-ab@acme.test" if owner == "a:b" else "ann-a@acme.test"
    for cmd in [*office(), connect("a", "ann", "ann-a@acme.test"),
                connect("a:b", "ann", "ann-ab@acme.test"),
                msg(owner, "m1", CUSTOMER, [address], thread_id=provider_thread)]:
        first = full.seq + 1
        log.extend(enumerate(run(full, cmd), first))
    assert list(full.threads) == ["a:b:t1"]
    lazy = restart(log)
    load(lazy, "a", log)
    (linked,) = run(full, {"cmd": "LinkThread", "user": "ann", "thread": "a:b:t1",
                           "record": "c1"})
    log.append((full.seq, linked))
    fold_lazily(lazy, linked, full.seq)  # "a" loaded, "a:b" waiting
    load_all(lazy, log)
    assert lazy == full
    later = restart(log)
    load(later, "a", log)  # the link is kept for "a", its thread is of "a:b"
    load_all(later, log)
    assert later == full


T_REDTEAM = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _log(cmds: list[dict[str, Any]]) -> tuple[TenantState, list[tuple[int, DomainEvent]]]:
    whole = TenantState(TENANT, message_content=False)
    log: list[tuple[int, DomainEvent]] = []
    for n, raw in enumerate(cmds, 1):
        cmd = parse_command({"tenant": TENANT, "at": (T_REDTEAM + timedelta(minutes=n)).isoformat(),
                             **raw})
        for event in decide(whole, cmd, now=cmd.at, correlation_id=f"c{n}"):
            evolve(whole, event, whole.seq + 1)
            log.append((whole.seq, event))
    return whole, log


def test_a_deletion_folds_when_another_waiting_mailbox_could_own_its_thread_id() -> None:
    """Mailboxes `mb` and `mb:t`; a message of `mb` whose provider thread id is `t:1` (thread
    `mb:t:1`). After a restart a DeleteMessage of it loads `mb` only; its MessageDeletionRequested
    folds (`_delete_message` looks the thread up: found, it is `mb`'s) without asking for `mb:t`
    (red-team review: it raised MailboxNotLoaded after the append)."""
    whole, log = _log([user("ann"), user("bob"), connect("mb", "ann"),
                       connect("mb:t", "bob", "bob@acme.test"),
                       msg("mb", "m1", "x@ext.test", ["ann@acme.test"], thread_id="t:1")])
    assert "mb:t:1" in whole.threads and whole.threads["mb:t:1"].mailbox == "mb"
    lazy = lazy_state(TENANT)
    for seq, event in log:
        fold_lazily(lazy, event, seq)
    delete = parse_command({"tenant": TENANT, "cmd": "DeleteMessage", "user": "ann",
                            "mailbox": "mb", "id": "m1",
                            "at": (T_REDTEAM + timedelta(hours=1)).isoformat()})
    for _ in range(3):  # the engine's loop: load what a rule asks for, decide again
        try:
            events = decide(lazy, delete, now=delete.at, correlation_id="del")
            break
        except MailboxNotLoaded as missing:
            for name in missing.mailboxes:
                load(lazy, name, log)
    assert unloaded(lazy) == {"mb:t"}
    # EventStore.append / _decided: ready_for loads what scope() names: `mb`, loaded already
    assert all(scope(lazy, e) == {"mb"} for e in events)
    # the whole state folds it; the lazy one must too (the events are already in the store)
    evolve(whole, events[0], whole.seq + 1)
    evolve(lazy, events[0], lazy.seq + 1)  # (raised MailboxNotLoaded({'mb:t'}) before)
    assert unloaded(lazy) == {"mb:t"}
    load(lazy, "mb:t", log)
    assert lazy == whole
