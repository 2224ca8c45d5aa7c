"""S13 (threading), S14 (dedup), E2/E5 (envelope, idempotency), domain time, bad input, V12."""

from __future__ import annotations

from datetime import timedelta

from rulekit import (
    CUSTOMER,
    T0,
    apply,
    at,
    contact,
    deal,
    kinds,
    lead,
    mailbox,
    mark,
    msg,
    office,
    rejection,
    run,
    thread_of,
    user,
)

from domain.commands import parse_command
from domain.decide import decide
from domain.state import TenantState

ANN = "ann@acme.test"


def base() -> TenantState:
    return apply([*office(), mailbox("mb-bob", "bob")])


def thread_ids(state: TenantState, *mids: str) -> list[str]:
    return [thread_of(state, "mb-ann", m).id for m in mids]


# --- S13: threading -----------------------------------------------------------------------


def test_s13_provider_thread_id_groups_messages() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="T", subject="A"),
                   msg("mb-ann", "m2", ANN, [CUSTOMER], thread_id="T", subject="B")])
    assert thread_ids(state, "m1", "m2") == ["mb-ann:T", "mb-ann:T"]


def test_s13_in_reply_to_and_references_join_the_thread() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], message_id="<a@x>"),
                   msg("mb-ann", "m2", ANN, [CUSTOMER], message_id="<b@x>",
                       in_reply_to="<a@x>"),
                   msg("mb-ann", "m3", CUSTOMER, [ANN], references=["<unknown@x>", "<b@x>"])])
    first, second, third = thread_ids(state, "m1", "m2", "m3")
    assert first == second == third
    assert state.threads[first].messages == ["m1", "m2", "m3"]


def test_s13_without_ids_or_references_a_new_thread_with_stable_id() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN],
                                  references=["<never-seen@x>"])])
    assert thread_ids(state, "m1") == ["mb-ann:crmsync-m1"]


def test_s13_never_threads_by_subject_alone() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], subject="Offer"),
                   msg("mb-ann", "m2", CUSTOMER, [ANN], subject="Offer"),
                   msg("mb-ann", "m3", CUSTOMER, [ANN], subject="Re: Offer")])
    assert len(set(thread_ids(state, "m1", "m2", "m3"))) == 3


def test_s13_reference_loops_are_safe() -> None:
    state = apply([*office(),
                   msg("mb-ann", "m1", CUSTOMER, [ANN], message_id="<x@l>", in_reply_to="<y@l>",
                       references=["<y@l>", "<x@l>"]),
                   msg("mb-ann", "m2", ANN, [CUSTOMER], message_id="<y@l>", in_reply_to="<x@l>",
                       references=["<x@l>", "<y@l>"]),
                   msg("mb-ann", "m3", CUSTOMER, [ANN], message_id="<s@l>", in_reply_to="<s@l>",
                       references=["<s@l>"])])
    first, second, third = thread_ids(state, "m1", "m2", "m3")
    assert first == second
    assert third not in (first, second)


def test_s13_provider_thread_id_wins_over_references() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], message_id="<a@x>"),
                   msg("mb-ann", "m2", ANN, [CUSTOMER], in_reply_to="<a@x>", thread_id="G")])
    assert thread_ids(state, "m1", "m2") == ["mb-ann:crmsync-m1", "mb-ann:G"]


def test_s13_another_copy_of_the_same_rfc_message_joins_its_thread() -> None:
    """An IMAP message moved between folders (or in INBOX and Sent) comes again under a new
    provider id: that copy, and a root message has no References, joins the first copy's
    thread instead of opening one of its own; its reply, still in the old folder, stays too."""
    state = apply([msg("mb-ann", "INBOX/7/1", CUSTOMER, [ANN], message_id="<root@x>"),
                   msg("mb-ann", "INBOX/7/2", ANN, [CUSTOMER], message_id="<reply@x>",
                       in_reply_to="<root@x>"),
                   msg("mb-ann", "Clients/9/1", CUSTOMER, [ANN], message_id="<root@x>")],
                  base())
    first, reply, moved = thread_ids(state, "INBOX/7/1", "INBOX/7/2", "Clients/9/1")
    assert first == reply == moved == "mb-ann:crmsync-INBOX/7/1"
    assert state.threads[first].messages == ["INBOX/7/1", "INBOX/7/2", "Clients/9/1"]
    run(state, msg("mb-bob", "b1", CUSTOMER, ["bob@acme.test"], message_id="<root@x>"))
    assert thread_of(state, "mb-bob", "b1").id == "mb-bob:crmsync-b1"  # per mailbox only


def test_s13_threads_never_cross_mailboxes() -> None:
    state = apply([msg("mb-bob", "b1", CUSTOMER, ["bob@acme.test"], message_id="<a@x>",
                       thread_id="T")], base())
    run(state, msg("mb-ann", "a1", CUSTOMER, [ANN], in_reply_to="<a@x>"))
    run(state, msg("mb-ann", "a2", CUSTOMER, [ANN], thread_id="T"))
    assert thread_ids(state, "a1", "a2") == ["mb-ann:crmsync-a1", "mb-ann:T"]
    assert thread_of(state, "mb-bob", "b1").id == "mb-bob:T"


# --- S14: deduplication -------------------------------------------------------------------


def test_s14_same_provider_message_twice_is_one_message() -> None:
    state = apply(office())
    first = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="T"))
    again = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="T", subject="changed"))
    assert kinds(first) == ["MessageSynced"] and again == []
    assert state.threads["mb-ann:T"].messages == ["m1"]
    assert state.mailboxes["mb-ann"].synced == 1


def test_s14_same_provider_id_in_two_mailboxes_are_two_copies() -> None:
    state = base()
    run(state, msg("mb-ann", "m1", CUSTOMER, [ANN, "bob@acme.test"]))
    assert kinds(run(state, msg("mb-bob", "m1", CUSTOMER, [ANN, "bob@acme.test"]))) \
        == ["MessageSynced"]
    assert {("mb-ann", "m1"), ("mb-bob", "m1")} <= set(state.messages)


# --- E5: idempotency by command_id; E2: the envelope --------------------------------------


def test_e5_same_command_id_twice_is_a_noop() -> None:
    state = apply(office())
    cmd = {**contact("c9", "bob", "z@z.test"), "command_id": "cmd-1"}
    assert kinds(run(state, cmd)) == ["ContactCreated"]
    seq = state.seq
    assert run(state, cmd) == []  # otherwise: "record already exists"
    assert state.seq == seq


def test_e5_command_id_replay_is_noop_even_with_earlier_at() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="t1")])
    share_cmd = {**mark("ann", ["mb-ann:t1"], shared=True), "command_id": "k1"}
    run(state, share_cmd)
    run(state, mark("ann", ["mb-ann:t1"], shared=False))
    assert run(state, {**share_cmd, "at": at(0)}) == []
    assert state.threads["mb-ann:t1"].flag is not None
    assert state.threads["mb-ann:t1"].flag[0] is False


def test_e5_different_command_ids_both_apply() -> None:
    state = apply(office())
    run(state, {**user("cleo"), "command_id": "a"})
    err = rejection(state, {**user("cleo"), "command_id": "b"})
    assert (err.cmd, err.field) == ("AddUser", "user")


def test_e2_events_carry_tenant_actor_time_and_correlation() -> None:
    state = apply(office())
    events = run(state, {**lead("l1", "bob", "l@l.test"), "actor": "bob", "at": at(500),
                         "command_id": "cid-7"})
    e = events[0]
    assert (e.tenant, e.actor, e.occurred_at) == ("acme", "bob", T0 + timedelta(minutes=500))
    assert (e.correlation_id, e.command_id) == ("cid-7", "cid-7")


def test_e2_without_at_the_callers_clock_and_default_actor_are_used() -> None:
    state = TenantState("acme")
    now = T0 + timedelta(days=3)
    cmd = parse_command({"cmd": "AddUser", "tenant": "acme", "user": "u", "email": "u@a.test",
                         "role": "member"})
    events = decide(state, cmd, now=now, correlation_id="delivery-1")
    assert events[0].occurred_at == now
    assert events[0].actor == "system:cli"
    assert events[0].correlation_id == "delivery-1"


# --- domain time cannot run backwards -----------------------------------------------------


def test_e4_at_earlier_than_last_event_rejected() -> None:
    state = apply([user("ann", "admin")])
    run(state, {**user("bob"), "at": at(60)})
    err = rejection(state, {**user("cleo"), "at": at(59)})
    assert (err.cmd, err.field) == ("AddUser", "at")
    assert "cleo" not in state.users
    assert kinds(run(state, {**user("cleo"), "at": at(60)})) == ["UserAdded"]  # same instant ok


def test_e4_at_without_utc_offset_rejected() -> None:
    state = apply([user("ann")])
    err = rejection(state, {**user("bob"), "at": "2026-02-01T10:00:00"})
    assert err.field == "at"


# --- bad input: unknown commands, fields, types, ids ----------------------------------------


def test_input_unknown_command_rejected() -> None:
    err = rejection(base(), {"cmd": "DropTables"})
    assert (err.cmd, err.field) == ("DropTables", "cmd")


def test_input_unknown_field_rejected() -> None:
    err = rejection(base(), {**user("cleo"), "nickname": "C"})
    assert (err.cmd, err.field) == ("AddUser", "nickname")
    err = rejection(base(), msg("mb-ann", "m1", CUSTOMER, [ANN], priority="high"))
    assert (err.cmd, err.field) == ("SyncMessage", "message.priority")


def test_input_wrong_type_rejected() -> None:
    state = base()
    cmd = {"cmd": "UnshareAddress", "user": "ann", "record": "c1", "address": CUSTOMER,
           "cascade": "yes"}
    assert rejection(state, cmd).field == "cascade"
    assert rejection(state, msg("mb-ann", "m1", CUSTOMER, "ann@acme.test")).field == "message.to"
    assert rejection(state, msg("mb-ann", "m1", CUSTOMER, [ANN], sent_at="yesterday")).field \
        == "message.sent_at"
    assert rejection(state, {**user("cleo"), "role": "owner"}).field == "role"


def test_input_malformed_json_rejected() -> None:
    state = base()
    assert rejection(state, "{not json").field == "(line)"
    assert rejection(state, '["AddUser"]').field == "(line)"
    assert rejection(state, '{"tenant": "acme"}').field == "cmd"


def test_v12_unknown_ids_rejected_with_field() -> None:
    state = base()
    cases = [
        ({"cmd": "DeactivateUser", "user": "ghost"}, "user"),
        ({**user("cleo"), "manager": "ghost"}, "manager"),
        ({"cmd": "AddCollaborator", "record": "nope", "user": "bob"}, "record"),
        ({"cmd": "AddCollaborator", "record": "c1", "user": "ghost"}, "user"),
        (deal("d9", "bob", "c1", "nope"), "contacts.1"),
        (contact("c9", "ghost", "x@x.test"), "owner"),
        ({"cmd": "LinkDealContact", "deal": "nope", "contact": "c1"}, "deal"),
        ({"cmd": "LinkDealContact", "deal": "d1", "contact": "nope"}, "contact"),
        (msg("mb-none", "m1", CUSTOMER, [ANN]), "mailbox"),
        ({"cmd": "UpdateMessage", "mailbox": "mb-ann", "id": "nope", "read": True}, "id"),
        ({"cmd": "LinkThread", "user": "ann", "thread": "mb-ann:nope", "record": "c1"}, "thread"),
        ({"cmd": "ShareAddress", "user": "ann", "record": "nope", "address": CUSTOMER}, "record"),
        ({"cmd": "ChangeMailboxAddress", "mailbox": "nope", "address": "a@b.test"}, "mailbox"),
    ]
    for cmd, field in cases:
        assert rejection(state, cmd).field == field, cmd


def test_v12_record_of_wrong_type_rejected() -> None:
    state = apply([*office(), lead("l1", "bob", "l@l.test")])
    assert rejection(state, deal("d9", "bob", "l1")).field == "contacts.0"
    assert rejection(state, {"cmd": "LinkDealContact", "deal": "c1", "contact": "c1"}).field \
        == "deal"


def test_v12_ids_of_another_tenant_are_unknown() -> None:
    other = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="t1")],
                  TenantState("globex"))
    mine = apply([user("zed")])
    assert "mb-ann:t1" in other.threads
    assert rejection(mine, msg("mb-ann", "m2", CUSTOMER, [ANN])).field == "mailbox"
    assert rejection(mine, {"cmd": "AddCollaborator", "record": "c1", "user": "zed"}).field \
        == "record"


def test_input_rule_breaking_commands_rejected_and_change_nothing() -> None:
    state = base()
    records = dict(state.records)
    assert rejection(state, {**user("cleo"), "email": "bob@ACME.test"}).field == "email"
    assert rejection(state, user("bob")).field == "user"
    assert rejection(state, contact("c1", "bob", "x@x.test")).field == "record"
    assert rejection(state, {"cmd": "ChangeUserManager", "user": "mgr",
                             "manager": "ann"}).field == "manager"  # ann reports to mgr
    assert rejection(state, contact("c9", "bob", "not-an-address")).field == "emails.0"
    assert state.records == records
