"""The command side folds `TenantState(t, message_content=False)` (issue #15, L2): no rule reads a
message's participants, subject or time, nor a thread's participants, so every decision on that
state is the decision on the full state; its projection-only readers refuse it; and its snapshot
holds no subject or address of a message."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from histories import T0, history
from rulekit import CUSTOMER, apply, mailbox, msg, office

from domain.commands import Command, parse_command
from domain.decide import decide, rejection_event
from domain.errors import Rejection
from domain.events import DomainEvent, EmailSent, MailboxDeletionsConfirmed, MessageDeletionHeld
from domain.state import TenantState, evolve
from domain.visibility import participants

TENANT = "acme"
OWNERS = {"mb0": "u1", "mb1": "u2", "mb2": "u3"}  # history(): the mailboxes and their users
EXTERNALS = [f"x{i}@ext.test" for i in range(6)]
GHOSTS = [f"<ghost{i}@ext.test>" for i in range(4)]  # parents named by replies, never synced
# what the histories must have decided, so the comparison is not vacuous
DECIDED = {"MessageSynced", "S13 by Message-ID", "S13 by missing parent", "MessageUpdated",
           "MessageDeletedAtProvider", "L5 mass_delete_guard", "MailboxDeletionsConfirmed applied",
           "MessageDeletionRequested", "MessageReadRequested", "EmailSent into a thread",
           "OutboundMailAcknowledged", "OutboundCopyMatched", "ThreadLinked", "ThreadUnlinked",
           "ThreadMarked", "UserContentErased", "TenantConfigured", "MessageSkipped",
           "CommandRejected"}


def extra(rng: random.Random, s: TenantState, n: int) -> dict[str, Any]:
    """A command history() lacks, aimed at what the full state `s` holds now."""
    mb = rng.choice(sorted(OWNERS))
    owner = OWNERS[mb]
    ids = [mid for box, mid in s.messages if box == mb] or ["nope"]
    rfcs = [m.rfc_id for (box, _), m in s.messages.items() if box == mb and m.rfc_id] + GHOSTS
    kind = rng.choice(["reply"] * 4 + ["copy", "update", "delete", "deletes", "confirm",
                                       "crm-delete", "read", "send", "ack", "link", "configure"])
    cmd: dict[str, Any]
    if kind in ("reply", "copy"):
        message: dict[str, Any] = {
            "id": f"e{n}", "from": rng.choice(EXTERNALS), "to": [f"{owner}@acme.test"],
            "subject": f"re {n}", "sent_at": (T0 + timedelta(hours=n)).isoformat(),
            "labels": rng.sample(["INBOX", "work"], 1), "in_reply_to": rng.choice(rfcs),
            "references": rng.sample(rfcs, min(len(rfcs), rng.randrange(3)))}
        if rng.random() < 0.7:
            message["message_id"] = f"<e{n}@ext.test>"
        if rng.random() < 0.2:
            message["thread_id"] = "t1"
        sent = [(k, p) for k, p in s.sent_provider_ids.items() if k[0] == mb]
        if kind == "copy" and sent:  # the provider's copy of CRM-sent mail (S14)
            (_, local), provider_id = rng.choice(sent)
            message["id"] = provider_id or f"p{n}"
            message["message_id"] = s.messages[(mb, local)].rfc_id
        cmd = {"cmd": "SyncMessage", "mailbox": mb, "message": message}
    elif kind == "update":
        cmd = {"cmd": "UpdateMessage", "mailbox": mb, "id": rng.choice(ids),
               "labels": rng.choice([None, ["work"]]), "read": rng.choice([None, True, False])}
    elif kind == "delete":
        cmd = {"cmd": "DeleteMessageAtProvider", "mailbox": mb, "id": rng.choice(ids)}
    elif kind == "deletes":
        cmd = {"cmd": "DeleteMessagesAtProvider", "mailbox": mb,
               "ids": rng.sample(ids, rng.randint(1, len(ids)))}
    elif kind == "confirm":
        cmd = {"cmd": "ConfirmMailboxDeletions", "mailbox": mb, "apply": rng.random() < 0.6}
    elif kind in ("crm-delete", "read"):
        cmd = {"cmd": "DeleteMessage" if kind == "crm-delete" else "MarkMessageRead",
               "user": owner, "mailbox": mb, "id": rng.choice(ids)}
        if kind == "read":
            cmd["read"] = rng.random() < 0.5
    elif kind == "send":
        threads = s.mailbox_threads.get(mb, [])
        cmd = {"cmd": "SendEmail", "user": owner, "mailbox": mb, "kind": "single",
               "to": [rng.choice(EXTERNALS)], "subject": f"sent {n}", "body": "b"}
        if threads and rng.random() < 0.6:
            cmd["thread"] = rng.choice(threads)
    elif kind == "link":  # by the thread's owner (history() picks any user)
        thread = rng.choice(s.mailbox_threads.get(mb, []) or ["nope"])
        cmd = rng.choice([{"cmd": rng.choice(["LinkThread", "UnlinkThread"]), "thread": thread,
                           "record": rng.choice(["c0", "l0", "d0"])},
                          {"cmd": rng.choice(["MarkThreadShared", "MarkThreadPrivate"]),
                           "threads": [thread]}])
        cmd["user"] = owner
    elif kind == "ack":
        request, req = rng.choice(sorted(s.outbound.items()) or [(f"out-{n}", None)])
        ok = rng.random() < 0.8
        cmd = {"cmd": "AcknowledgeOutboundMail", "mailbox": req.mailbox if req else mb,
               "request": request, "ok": ok, "provider_id": f"p{n}",
               "provider_thread_id": f"pt{n}", "error": None if ok else "refused"}
    else:
        cmd = {"cmd": "ConfigureTenant", "mass_delete_threshold": rng.choice([0.2, 0.5, 1.0]),
               "sending_domain": "mail.acme.test",
               "bcc_address": rng.choice([None, "drop@acme.test"]),
               "attachment_policy": rng.choice(["drop_attachment", "skip_message"])}
    if rng.random() < 0.1:
        cmd["command_id"] = f"k{rng.randrange(4)}"  # E5: some are applied already
    return {k: v for k, v in cmd.items() if v is not None}


def outcome(s: TenantState, cmd: Command) -> tuple[list[DomainEvent], tuple[str, ...] | None]:
    """What the engine does with `cmd` on `s`: its events, or its rejection and the audit
    record of it (runners.services.apply, `execute_batch`)."""
    assert cmd.at is not None
    try:
        return decide(s, cmd, now=cmd.at, correlation_id=f"c{s.seq}"), None
    except Rejection as refused:
        record = rejection_event(s, cmd, refused, now=cmd.at, correlation_id=f"c{s.seq}",
                                 actor=cmd.actor or "system:cli")
        return [record], (type(refused).__name__, refused.cmd, refused.field, refused.reason)


def command_side(s: TenantState, rfcs: set[tuple[str, str]]) -> dict[str, Any]:
    """Everything of `s` a rule or a command-side service reads (`rfcs`: the keys of the S13
    index to read)."""
    return {
        "messages": {k: (m.thread, m.rfc_id, m.labels, m.read, m.deleted, m.delivery_status)
                     for k, m in s.messages.items()},
        "threads": {t: (th.mailbox, th.created_seq, th.crm_initiated, th.messages, th.flag,
                        th.manual) for t, th in s.threads.items()},
        "mailbox_threads": {mb: s.mailbox_threads.get(mb) for mb in s.mailboxes},
        "rfc_index": {k: s.rfc_index.get(k) for k in sorted(rfcs)},
        "missing_parents": s.missing_parents, "mailboxes": s.mailboxes,
        "outbox": (s.outbound, s.sent_provider_ids, s.local_ids, s.thread_aliases,
                   s.crm_deleted),
        "rest": (s.seq, s.last_at, s.settings, s.users, s.records, s.address_records,
                 s.deals_of_contact, s.manual_threads, s.user_addresses, s.applied_commands,
                 s.contacts)}


def assert_same_for_the_command_side(full: TenantState, lean: TenantState) -> None:
    rfcs = {(mb, m.rfc_id) for (mb, _), m in full.messages.items() if m.rfc_id}
    rfcs |= set(full.missing_parents) | {(mb, g) for mb in OWNERS for g in GHOSTS}
    assert command_side(lean, rfcs) == command_side(full, rfcs)
    assert all(not m.participants and not m.subject and not m.sent_at
               for m in lean.messages.values())
    assert all(not th.participants for th in lean.threads.values())


def label(s: TenantState, cmd: Command, events: list[DomainEvent]) -> list[str]:
    """What `events` decided, named for the DECIDED check (`s`: the state before them)."""
    names = [type(e).__name__ for e in events]
    payload = getattr(cmd, "message", None)
    if "MessageSynced" in names and payload is not None and payload.thread_id is None:
        named = [payload.in_reply_to, *(payload.references or [])]
        mb = getattr(cmd, "mailbox", "")
        if any(r and (mb, r) in s.rfc_index for r in named):
            names.append("S13 by Message-ID")
        elif any(r and (mb, r) in s.missing_parents for r in named):
            names.append("S13 by missing parent")
    for e in events:
        if isinstance(e, EmailSent) and getattr(cmd, "thread", None) is not None:
            names.append("EmailSent into a thread")
        if isinstance(e, MessageDeletionHeld) and e.reason.startswith("mass_delete_guard"):
            names.append("L5 mass_delete_guard")
        if isinstance(e, MailboxDeletionsConfirmed) and e.applied and e.ids:
            names.append("MailboxDeletionsConfirmed applied")
    return names


def commands(seed: int, full: TenantState
             ) -> Iterator[tuple[int, dict[str, Any], Command]]:
    """history(seed) and extra(...) commands with the history's index of each (extra() reads
    `full`, the whole state the caller folds in place): the commands every differential test
    of the command side decides (test_lazy_mailboxes too)."""
    rng = random.Random(seed)
    minutes = 0
    for n, raw in enumerate(history(seed, 80 + 20 * seed)):
        for made in [extra(rng, full, n), raw] if n >= 13 and rng.random() < 0.6 else [raw]:
            minutes += 1
            at = T0 + timedelta(minutes=minutes)
            try:
                cmd = parse_command({**made, "tenant": TENANT, "at": at.isoformat()})
            except Rejection:
                continue  # refused before any rule reads a state
            yield n, made, cmd


def test_every_decision_on_the_command_state_equals_the_full_state() -> None:
    decided: Counter[str] = Counter()
    for seed in range(12):
        full, lean = TenantState(TENANT), TenantState(TENANT, message_content=False)
        for n, made, cmd in commands(seed, full):
            full_events, full_refusal = outcome(full, cmd)
            lean_events, lean_refusal = outcome(lean, cmd)
            assert lean_refusal == full_refusal, made
            assert [e.model_dump() for e in lean_events] == \
                [e.model_dump() for e in full_events], made
            decided.update(label(full, cmd, full_events))
            decided["(commands)"] += 1
            for event in full_events:
                evolve(full, event, full.seq + 1)
            for event in lean_events:
                evolve(lean, event, lean.seq + 1)
            if n % 25 == 0:
                assert_same_for_the_command_side(full, lean)
        assert_same_for_the_command_side(full, lean)
    assert not DECIDED - set(decided), sorted(DECIDED - set(decided))


def test_projection_readers_refuse_a_state_without_content() -> None:
    story = [*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1")]
    full = apply(story, TenantState(TENANT))
    lean = apply(story, TenantState(TENANT, message_content=False))
    thread = full.threads["mb-ann:t1"]
    assert participants(full, thread) == {CUSTOMER, "ann@acme.test"}
    assert [m.id for m in full.live_messages(thread)] == ["m1"]
    assert full.threads_with(CUSTOMER) == {"mb-ann:t1"}
    thread = lean.threads["mb-ann:t1"]
    with pytest.raises(ValueError, match="no message content"):
        participants(lean, thread)
    with pytest.raises(ValueError, match="no message content"):
        lean.live_messages(thread)
    with pytest.raises(ValueError, match="no participants"):
        lean.threads_with(CUSTOMER)


def test_the_command_state_holds_no_subject_or_participant() -> None:
    secret = "secret-person@ext.test"
    story = [*office(), mailbox("mb-bob", "bob")]
    for i in range(4):
        story.append(msg(["mb-ann", "mb-bob"][i % 2], f"m{i}", secret,
                         ["ann@acme.test", "bob@acme.test"], cc=[f"cc-{secret}"],
                         subject=f"secret-subject-{i}", message_id=f"<s{i}@ext.test>",
                         in_reply_to=f"<s{i - 2}@ext.test>" if i >= 2 else None))
    story += [{"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
               "to": [secret], "subject": "secret-subject-sent", "body": "b",
               "thread": "mb-ann:crmsync-m0"},
              {"cmd": "UpdateMessage", "mailbox": "mb-ann", "id": "m2", "read": True},
              {"cmd": "DeleteMessage", "user": "bob", "mailbox": "mb-bob", "id": "m1"}]
    full = apply(story, TenantState(TENANT))
    lean = apply(story, TenantState(TENANT, message_content=False))
    assert len(lean.messages) == 5
    for text in (b"secret-subject", b"secret-person"):
        assert text in pickle.dumps(full)
        assert text not in pickle.dumps(lean)
