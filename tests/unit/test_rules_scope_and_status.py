"""Issue #13 points 2, 5, 13, 14 and S1's sent-mail rule: ChangeMailboxScope, the sent mail of
in-scope threads, S9 for CRM-started threads, the reactivation warning (L4) and a sync status
whose last_error is fresh."""

from __future__ import annotations

from rulekit import CUSTOMER, apply, kinds, mailbox, msg, office, rejection, run, user

from domain.commands import parse_command
from domain.errors import Rejection
from domain.permissions import authorise
from domain.state import TenantState

ANN = "ann@acme.test"
LABELS = {"mode": "labels", "labels": ["Projects"]}


def scope(scope: dict) -> dict:
    return {"cmd": "ChangeMailboxScope", "mailbox": "mb-ann", "scope": scope}


# --- S1 / §6: ChangeMailboxScope ---------------------------------------------------------------


def test_s1_change_mailbox_scope_applies_to_mail_synced_from_then_on() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], labels=["Inbox"])])
    events = run(state, scope(LABELS))
    assert kinds(events) == ["MailboxScopeChanged"]
    assert state.mailboxes["mb-ann"].scope == LABELS
    outside = run(state, msg("mb-ann", "m2", "x@ext.test", [ANN], labels=["Inbox"]))
    inside = run(state, msg("mb-ann", "m3", "y@ext.test", [ANN], labels=["Projects"]))
    assert kinds(outside) == ["MessageSkipped"] and kinds(inside) == ["MessageSynced"]
    assert ("mb-ann", "m1") in state.messages  # synced before: stays
    back = run(state, scope({"mode": "all"}))
    assert kinds(back) == ["MailboxScopeChanged"]
    assert kinds(run(state, msg("mb-ann", "m4", "z@ext.test", [ANN], labels=["Inbox"]))) == \
        ["MessageSynced"]


def test_s1_change_mailbox_scope_to_the_same_scope_is_no_event() -> None:
    state = apply(office())
    assert run(state, scope({"mode": "all"})) == []


def test_s1_change_mailbox_scope_validates_scope_and_mailbox() -> None:
    state = apply(office())
    err = rejection(state, scope({"mode": "labels", "labels": []}))
    assert err.cmd == "ChangeMailboxScope" and err.field.startswith("scope")
    err = rejection(state, {"cmd": "ChangeMailboxScope", "mailbox": "nope", "scope": LABELS})
    assert err.field == "mailbox"
    gone = apply([{"cmd": "ReportMailboxGone", "mailbox": "mb-ann"}], state)
    assert rejection(gone, scope(LABELS)).field == "mailbox"


def _authorized(state: TenantState, who: str) -> bool:
    cmd = parse_command({"tenant": "acme", **scope(LABELS)})
    try:
        authorise(state, cmd, user=who, service=False)
    except Rejection:
        return False
    return True


def test_s1_change_mailbox_scope_is_for_the_owner_or_an_admin() -> None:
    state = apply(office())
    assert _authorized(state, "ann") and _authorized(state, "boss")
    assert not _authorized(state, "bob") and not _authorized(state, "mgr")


def test_s1_own_sent_mail_of_an_in_scope_thread_syncs_whatever_its_folder() -> None:
    state = apply([user("ann"), mailbox("mb-ann", "ann", scope=LABELS)])
    first = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="T", labels=["Projects"]))
    reply = run(state, msg("mb-ann", "m2", ANN, [CUSTOMER], thread_id="T",
                           labels=["Sent Items"]))
    assert kinds(first) == ["MessageSynced"] and kinds(reply) == ["MessageSynced"]
    assert state.threads["mb-ann:T"].messages == ["m1", "m2"]
    # sent mail of a thread that is not in scope, and others' mail in Sent Items, stay out
    alone = run(state, msg("mb-ann", "m3", ANN, [CUSTOMER], thread_id="U", labels=["Sent Items"]))
    other = run(state, msg("mb-ann", "m4", CUSTOMER, [ANN], thread_id="T", labels=["Sent Items"]))
    assert kinds(alone) == ["MessageSkipped"] and kinds(other) == ["MessageSkipped"]


# --- S9: CRM-started threads of the old address stop too ------------------------------------


def test_s9_crm_started_thread_of_the_old_address_stops_syncing() -> None:
    state = apply(office())
    sent = run(state, {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
                       "to": [CUSTOMER], "subject": "Offer", "body": "Hello"})
    crm_thread = sent[0].thread  # type: ignore[attr-defined]
    rfc = sent[0].message.message_id  # type: ignore[attr-defined]
    before = run(state, msg("mb-ann", "r1", CUSTOMER, [ANN], in_reply_to=rfc))
    assert kinds(before) == ["MessageSynced"]
    run(state, {"cmd": "ChangeMailboxAddress", "mailbox": "mb-ann", "address": "ann2@acme.test"})
    after = run(state, msg("mb-ann", "r2", CUSTOMER, [ANN], in_reply_to=rfc))
    assert kinds(after) == ["MessageSkipped"]
    assert after[0].reason == "thread_of_old_address"  # type: ignore[attr-defined]
    assert ("mb-ann", "r2") not in state.messages
    assert len(state.threads[crm_thread].messages) == 2  # it stays
    # a CRM thread started from the new address syncs both ways (S7)
    new = run(state, {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
                      "to": [CUSTOMER], "subject": "Again", "body": "Hi"})
    rfc2 = new[0].message.message_id  # type: ignore[attr-defined]
    assert kinds(run(state, msg("mb-ann", "r3", CUSTOMER, ["ann2@acme.test"],
                                in_reply_to=rfc2))) == ["MessageSynced"]


# --- L4: reactivation warns about a gone mailbox -------------------------------------------


def test_l4_reactivating_a_user_whose_mailbox_is_gone_warns_and_keeps_history() -> None:
    state = apply([*office(), mailbox("mb-ann2", "ann", "ann@other.test"),
                   msg("mb-ann", "m1", CUSTOMER, [ANN]),
                   {"cmd": "DeactivateUser", "user": "ann"},
                   {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"}])
    events = run(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert kinds(events) == ["UserReactivated"]
    warnings = events[0].warnings  # type: ignore[attr-defined]
    assert len(warnings) == 1 and "'mb-ann'" in warnings[0] and "gone" in warnings[0]
    assert "history is kept" in warnings[0]
    assert ("mb-ann", "m1") in state.messages and state.mailboxes["mb-ann"].status == "gone"
    assert state.users["ann"].status == "active"


def test_l4_reactivating_a_user_with_connected_mailboxes_has_no_warning() -> None:
    state = apply([*office(), {"cmd": "DeactivateUser", "user": "ann"}])
    events = run(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert events[0].warnings == []  # type: ignore[attr-defined]


# --- L3/S10: last_error is fresh ------------------------------------------------------------


def _cursor(cursor: str) -> dict:
    return {"cmd": "AdvanceMailboxCursor", "mailbox": "mb-ann", "cursor": cursor,
            "delivery_id": f"d-{cursor}"}


def test_s10_last_error_clears_when_the_mailbox_reconnects_and_syncs() -> None:
    state = apply([*office(), _cursor("1"), {"cmd": "DisconnectMailbox", "mailbox": "mb-ann"},
                   _cursor("2")])
    mbx = state.mailboxes["mb-ann"]
    assert mbx.last_error == "mailbox_disconnected" and mbx.skipped == 1
    run(state, {"cmd": "ReconnectMailbox", "mailbox": "mb-ann"})
    assert mbx.last_error is None
    run(state, _cursor("3"))
    assert mbx.cursor == "3" and mbx.last_error is None and mbx.skipped == 1


def test_l3_last_error_clears_after_reactivation_and_a_sync() -> None:
    state = apply([*office(), _cursor("1"), {"cmd": "DeactivateUser", "user": "ann"},
                   _cursor("2"), {"cmd": "ReactivateUser", "user": "ann"}])
    mbx = state.mailboxes["mb-ann"]
    assert mbx.last_error == "user_deactivated"  # still: nothing has synced since
    run(state, msg("mb-ann", "m1", CUSTOMER, [ANN]))
    assert mbx.last_error is None and mbx.synced == 1


def test_s1_last_error_of_a_message_stays_until_replaced() -> None:
    state = apply([user("ann"), mailbox("mb-ann", "ann", scope=LABELS)])
    run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], labels=["Inbox"]))
    run(state, _cursor("1"))
    assert state.mailboxes["mb-ann"].last_error == "out_of_scope"
