"""L1-L6: deactivation, deletion, reactivation, gone mailboxes, the mass-deletion guard and
order independence.

Standard tenant (rulekit.office): ann owns mailbox mb-ann and thread `mb-ann:t1` with CUSTOMER,
who is contact c1 of bob. ann shares contacts globally, so bob sees the thread on c1.
"""

from __future__ import annotations

import orjson
from rulekit import (
    CUSTOMER,
    apply,
    contact,
    deciding_rule,
    kinds,
    level,
    mailbox,
    msg,
    office,
    office_with_thread,
    rejection,
    run,
    sees,
    unshare,
    user,
    visible,
)

from domain.state import TenantState


def shared_office(*extra: dict) -> TenantState:
    state, _ = office_with_thread(level("ann", "contact", "visible"), *extra)
    return state


def later_mail(mid: str = "m2") -> dict:
    return msg("mb-ann", mid, CUSTOMER, ["ann@acme.test"], thread_id="t1")


# --- L1: deactivation -------------------------------------------------------------------------


def test_l1_deactivated_user_new_mail_is_skipped_user_deactivated() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "ann"})
    mbx = state.mailboxes["mb-ann"]
    synced, last_sync = mbx.synced, mbx.last_sync_at
    events = run(state, later_mail())
    assert kinds(events) == ["MessageSkipped"]
    assert events[0].reason == "user_deactivated"  # type: ignore[attr-defined]
    assert ("mb-ann", "m2") not in state.messages
    assert (mbx.synced, mbx.last_sync_at) == (synced, last_sync)  # the cursor did not move
    assert mbx.skipped == 1


def test_l1_deactivated_user_provider_updates_and_deletions_are_skipped() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "ann"})
    upd = run(state, {"cmd": "UpdateMessage", "mailbox": "mb-ann", "id": "m1", "read": True})
    dele = run(state, {"cmd": "DeleteMessageAtProvider", "mailbox": "mb-ann", "id": "m1"})
    assert kinds(upd + dele) == ["MessageSkipped", "MessageSkipped"]
    msg1 = state.messages[("mb-ann", "m1")]
    assert not msg1.read and not msg1.deleted


def test_l1_deactivated_user_threads_stay_visible_under_their_settings() -> None:
    state = shared_office(msg("mb-ann", "x1", "dora@customer.test", ["ann@acme.test"],
                              thread_id="t2"),
                          contact("c2", "bob", "dora@customer.test"),
                          unshare("ann", "c2", "dora@customer.test", cascade=False),
                          {"cmd": "DeactivateUser", "user": "ann"})
    assert sees(state, "bob", "mb-ann:t1", "c1")  # ann's global level still applies
    assert not sees(state, "bob", "mb-ann:t2", "c2")  # and so does her unshare


def test_l1_deactivated_viewer_sees_nothing() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "bob"},
                          {"cmd": "DeactivateUser", "user": "ann"})
    t = state.threads["mb-ann:t1"]
    assert not sees(state, "bob", t, "c1")
    assert not visible(state, "bob", t)
    assert not visible(state, "ann", t)  # not even her own mailbox thread
    assert deciding_rule(state, "bob", t, "c1") == "L1"


def test_l1_deactivated_user_cannot_act() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "ann"})
    err = rejection(state, {"cmd": "MarkThreadPrivate", "user": "ann", "threads": ["mb-ann:t1"]})
    assert err.field == "user"
    err = rejection(state, {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann",
                            "kind": "single", "to": [CUSTOMER], "subject": "s", "body": "b"})
    assert err.field == "user"


# --- L3: reactivation ---------------------------------------------------------------------


def test_l3_reactivate_only_from_deactivated() -> None:
    state = shared_office()
    err = rejection(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert (err.cmd, err.field) == ("ReactivateUser", "user")
    run(state, {"cmd": "DeactivateUser", "user": "ann"})
    assert rejection(state, {"cmd": "DeactivateUser", "user": "ann"}).field == "user"
    run(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert state.users["ann"].status == "active"


def test_l3_reactivating_deleted_user_rejected() -> None:
    state = shared_office({"cmd": "DeleteUser", "user": "ann"})
    err = rejection(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert err.field == "user" and "deleted" in err.reason
    assert state.users["ann"].status == "deleted"


def test_l3_reactivation_resumes_sync_and_takes_mail_skipped_meanwhile() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "ann"})
    assert kinds(run(state, later_mail())) == ["MessageSkipped"]
    run(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert kinds(run(state, later_mail())) == ["MessageSynced"]  # the same mail, resynced
    assert state.threads["mb-ann:t1"].messages == ["m1", "m2"]


def test_l3_unknown_user_rejected() -> None:
    state = shared_office()
    assert rejection(state, {"cmd": "ReactivateUser", "user": "ghost"}).field == "user"
    assert rejection(state, {"cmd": "DeactivateUser", "user": "ghost"}).field == "user"


# --- L2: deletion -------------------------------------------------------------------------


def test_l2_delete_user_with_records_needs_reassign_to() -> None:
    state = shared_office()
    err = rejection(state, {"cmd": "DeleteUser", "user": "bob"})
    assert (err.cmd, err.field) == ("DeleteUser", "reassign_to")
    assert "c1" in err.reason and "d1" in err.reason
    assert state.users["bob"].status == "active"


def test_l2_reassign_to_must_be_an_active_other_user() -> None:
    state = shared_office(user("cleo"), {"cmd": "DeactivateUser", "user": "cleo"})
    for target in ("cleo", "ghost", "bob"):
        err = rejection(state, {"cmd": "DeleteUser", "user": "bob", "reassign_to": target})
        assert err.field == "reassign_to", target


def test_l2_delete_user_reassigns_records() -> None:
    state = shared_office()
    events = run(state, {"cmd": "DeleteUser", "user": "bob", "reassign_to": "mgr"})
    assert kinds(events) == ["RecordOwnerChanged", "RecordOwnerChanged", "UserDeleted",
                            "UserContentErased"]
    assert state.records["c1"].owner == "mgr"
    assert state.records["d1"].owner == "mgr"
    assert state.users["bob"].status == "deleted"
    assert sees(state, "mgr", "mb-ann:t1", "c1")  # the new owner has access now


def test_l2_delete_user_without_records_needs_no_reassign_to() -> None:
    state = shared_office()
    assert kinds(run(state, {"cmd": "DeleteUser", "user": "ann"})) == ["UserDeleted",
                                                                       "UserContentErased"]


def test_l2_delete_user_removes_credentials_which_never_enter_events() -> None:
    secret = "tok-SECRET-123"
    state = apply([user("ann"), mailbox("mb-ann", "ann",
                                        credentials={"access_token": secret})])
    assert state.mailboxes["mb-ann"].credentials_set
    events = run(state, {"cmd": "DeleteUser", "user": "ann"})
    assert kinds(events) == ["CredentialsRemoved", "UserDeleted", "UserContentErased"]
    assert not state.mailboxes["mb-ann"].credentials_set


def test_l2_credentials_never_enter_an_event() -> None:
    secret = "tok-SECRET-123"
    state = TenantState("acme")
    events = run(state, user("ann"))
    events += run(state, mailbox("mb-ann", "ann", credentials={"access_token": secret}))
    events += run(state, {"cmd": "DisconnectMailbox", "mailbox": "mb-ann"})
    assert kinds(events)[-2:] == ["MailboxDisconnected", "CredentialsRemoved"]
    for e in events:
        assert secret not in orjson.dumps(e.model_dump(mode="json")).decode()


def test_l2_deleted_user_threads_disappear_from_every_view() -> None:
    state = shared_office({"cmd": "ConfigureTenant", "bcc_address": "drop@bcc.acme.test"},
                          msg("mb-ann", "b1", "ann@acme.test",
                              ["new@prospect.test", "drop@bcc.acme.test"]))
    bcc_thread = state.messages[("mb-ann", "b1")].thread
    run(state, level("ann", "contact", "visible"))
    assert visible(state, "boss", bcc_thread)
    run(state, {"cmd": "DeleteUser", "user": "ann", "reassign_to": "bob"})
    for viewer in ("ann", "bob", "boss", "mgr"):
        assert not visible(state, viewer, "mb-ann:t1"), viewer
        assert not visible(state, viewer, bcc_thread), viewer
    assert not sees(state, "bob", "mb-ann:t1", "c1")


def test_l2_deleted_user_mail_is_skipped_and_delete_is_final() -> None:
    state = shared_office({"cmd": "DeleteUser", "user": "ann"})
    events = run(state, later_mail())
    assert events[0].reason == "user_deleted"  # type: ignore[attr-defined]
    assert rejection(state, {"cmd": "DeleteUser", "user": "ann"}).field == "user"


# --- L4: the mailbox is gone at the provider ------------------------------------------------


def test_l4_report_mailbox_gone_keeps_threads() -> None:
    state = shared_office(later_mail())
    run(state, {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"})
    assert state.mailboxes["mb-ann"].status == "gone"
    assert [m.id for m in state.live_messages(state.threads["mb-ann:t1"])] == ["m1", "m2"]
    assert sees(state, "bob", "mb-ann:t1", "c1")
    assert run(state, {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"}) == []


def test_l4_gone_mailbox_input_is_skipped_not_applied() -> None:
    state = shared_office({"cmd": "ReportMailboxGone", "mailbox": "mb-ann"})
    sync = run(state, later_mail())
    dele = run(state, {"cmd": "DeleteMessageAtProvider", "mailbox": "mb-ann", "id": "m1"})
    assert [e.reason for e in sync + dele] == ["mailbox_gone", "mailbox_gone"]  # type: ignore[attr-defined]
    assert not state.messages[("mb-ann", "m1")].deleted


def test_l4_reactivation_does_not_lose_history_of_gone_mailbox() -> None:
    state = shared_office({"cmd": "DeactivateUser", "user": "ann"},
                          {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"},
                          {"cmd": "ReactivateUser", "user": "ann"})
    assert visible(state, "ann", "mb-ann:t1")
    assert sees(state, "bob", "mb-ann:t1", "c1")


# --- L5: mass-deletion guard --------------------------------------------------------------


def delete(mid: str) -> dict:
    return {"cmd": "DeleteMessageAtProvider", "mailbox": "mb-ann", "id": mid}


def four_messages(*extra: dict) -> TenantState:
    return shared_office(later_mail("m2"), later_mail("m3"), later_mail("m4"), *extra)


def test_l5_deleting_under_threshold_applies() -> None:
    state = four_messages()
    assert kinds(run(state, delete("m1"))) == ["MessageDeletedAtProvider"]
    assert state.messages[("mb-ann", "m1")].deleted
    assert not state.mailboxes["mb-ann"].suspect


def test_l5_deletion_over_threshold_is_held_and_mailbox_suspect() -> None:
    state = shared_office()  # one stored message: deleting it is 100 %
    events = run(state, delete("m1"))
    assert kinds(events) == ["MessageDeletionHeld"]
    assert "mass_delete_guard" in events[0].reason  # type: ignore[attr-defined]
    assert state.mailboxes["mb-ann"].suspect
    assert not state.messages[("mb-ann", "m1")].deleted
    assert sees(state, "bob", "mb-ann:t1", "c1")


def test_l5_configured_threshold_is_used() -> None:
    state = four_messages({"cmd": "ConfigureTenant", "mass_delete_threshold": 0.2})
    assert kinds(run(state, delete("m1"))) == ["MessageDeletionHeld"]  # 25 % > 20 %


def test_l5_suspect_mailbox_holds_every_further_deletion() -> None:
    state = four_messages({"cmd": "ConfigureTenant", "mass_delete_threshold": 0.2})
    run(state, delete("m1"))
    assert kinds(run(state, delete("m2"))) == ["MessageDeletionHeld"]
    assert run(state, delete("m2")) == []  # held once
    assert state.mailboxes["mb-ann"].pending_deletions == ["m1", "m2"]


def test_l5_suspect_mailbox_holds_even_deletions_under_the_threshold() -> None:
    state = shared_office(delete("m1"))  # 1 of 1 stored: held, mailbox suspect
    assert state.mailboxes["mb-ann"].suspect
    run(state, later_mail("m2"))  # new mail still syncs
    run(state, later_mail("m3"))
    run(state, later_mail("m4"))
    events = run(state, delete("m2"))  # 1 of 4 would pass the threshold on its own
    assert kinds(events) == ["MessageDeletionHeld"]
    assert "mailbox_suspect" in events[0].reason  # type: ignore[attr-defined]
    assert not state.messages[("mb-ann", "m2")].deleted


def test_l5_confirm_mailbox_deletions_apply() -> None:
    state = four_messages({"cmd": "ConfigureTenant", "mass_delete_threshold": 0.2})
    run(state, delete("m1"))
    run(state, delete("m2"))
    run(state, {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb-ann", "apply": True})
    deleted = sorted(m for (_, m), v in state.messages.items() if v.deleted)
    assert deleted == ["m1", "m2"]
    assert not state.mailboxes["mb-ann"].suspect


def test_l5_confirm_mailbox_deletions_discard() -> None:
    state = four_messages({"cmd": "ConfigureTenant", "mass_delete_threshold": 0.2})
    run(state, delete("m1"))
    run(state, {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb-ann", "apply": False})
    assert not any(v.deleted for v in state.messages.values())
    assert not state.mailboxes["mb-ann"].suspect
    assert kinds(run(state, delete("m1"))) == ["MessageDeletionHeld"]  # guard still on


def test_l5_confirm_without_held_deletions_rejected() -> None:
    state = four_messages()
    err = rejection(state, {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb-ann",
                            "apply": True})
    assert (err.cmd, err.field) == ("ConfirmMailboxDeletions", "mailbox")


# --- L6: order independence ---------------------------------------------------------------


def retained(state: TenantState) -> tuple:
    live = sorted(k for k, m in state.messages.items() if not m.deleted)
    threads = sorted((t.id, tuple(t.messages)) for t in state.threads.values())
    return (live, threads, state.mailboxes["mb-ann"].status, state.users["ann"].status,
            sees(state, "bob", "mb-ann:t1", "c1"))


def test_l6_deactivate_and_mailbox_gone_in_either_order_retain_same_history() -> None:
    deactivate = {"cmd": "DeactivateUser", "user": "ann"}
    gone = {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"}
    tail = [later_mail("m9"), delete("m1"), delete("m2")]
    first = four_messages(deactivate, *tail, gone, *tail)
    second = four_messages(gone, *tail, deactivate, *tail)
    assert retained(first) == retained(second)
    assert retained(first)[0] == [("mb-ann", m) for m in ("m1", "m2", "m3", "m4")]
    reactivate = {"cmd": "ReactivateUser", "user": "ann"}
    assert retained(apply([reactivate], first)) == retained(apply([reactivate], second))


def test_l6_mailbox_gone_after_deletion_hold_keeps_messages() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"]),
                   delete("m1"), {"cmd": "ReportMailboxGone", "mailbox": "mb-ann"},
                   {"cmd": "DeactivateUser", "user": "ann"}])
    assert not state.messages[("mb-ann", "m1")].deleted
    assert state.mailboxes["mb-ann"].status == "gone"
