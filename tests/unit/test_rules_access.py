"""V8 (record view: access, links, active viewers, deleted thread owners), V9 (mailbox page)."""

from __future__ import annotations

from rulekit import (
    CUSTOMER,
    apply,
    contact,
    deciding_rule,
    level,
    mailbox,
    mark,
    msg,
    office,
    office_with_thread,
    rejection,
    run,
    sees,
    thread_of,
    user,
    visible,
)

from domain.visibility import access, links


def chain_tenant() -> list[dict]:
    """top <- mid <- rec (record owner); ann owns the thread and shares everything on contacts."""
    return [
        user("top", "manager"), user("mid", "manager", manager="top"),
        user("rec", manager="mid"), user("ann"), user("outsider", "manager"),
        mailbox("mb-ann", "ann"), contact("c1", "rec", CUSTOMER),
        msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1"),
        level("ann", "contact", "visible"),
    ]


# --- access(R) ------------------------------------------------------------------------------


def test_v8_access_is_owner_collaborators_managers_and_admins() -> None:
    state = apply([*chain_tenant(), user("adm", "admin"), user("col"),
                   {"cmd": "AddCollaborator", "record": "c1", "user": "col"}])
    assert access(state, state.records["c1"]) == {"rec", "col", "mid", "top", "adm"}


def test_v8_record_owner_and_collaborator_see_shared_thread() -> None:
    state = apply([*chain_tenant(), user("col"),
                   {"cmd": "AddCollaborator", "record": "c1", "user": "col"}])
    assert sees(state, "rec", "mb-ann:t1", "c1")
    assert sees(state, "col", "mb-ann:t1", "c1")


def test_v8_managers_above_record_owner_see_transitively() -> None:
    state = apply(chain_tenant())
    assert sees(state, "mid", "mb-ann:t1", "c1")
    assert sees(state, "top", "mb-ann:t1", "c1")
    assert not sees(state, "outsider", "mb-ann:t1", "c1")


def test_v8_manager_change_reevaluates_access() -> None:
    state = apply([*chain_tenant(),
                   {"cmd": "ChangeUserManager", "user": "mid", "manager": "outsider"}])
    assert sees(state, "outsider", "mb-ann:t1", "c1")
    assert not sees(state, "top", "mb-ann:t1", "c1")
    run(state, {"cmd": "ChangeUserManager", "user": "rec", "manager": None})
    assert not sees(state, "mid", "mb-ann:t1", "c1")


def test_v8_manager_of_the_thread_owner_gets_no_access_from_that() -> None:
    state = apply([*chain_tenant(), {"cmd": "ChangeUserManager", "user": "ann",
                                     "manager": "outsider"}])
    assert not sees(state, "outsider", "mb-ann:t1", "c1")


def test_v8_admins_see_shared_threads_on_any_record() -> None:
    state = apply([*chain_tenant(), user("adm", "admin")])
    assert sees(state, "adm", "mb-ann:t1", "c1")


def test_v8_access_only_for_active_users() -> None:
    state = apply([*chain_tenant(), user("adm", "admin"),
                   {"cmd": "DeactivateUser", "user": "adm"},
                   {"cmd": "DeactivateUser", "user": "mid"}])
    assert access(state, state.records["c1"]) == {"rec", "top"}
    assert not sees(state, "adm", "mb-ann:t1", "c1")
    assert not sees(state, "mid", "mb-ann:t1", "c1")
    assert sees(state, "top", "mb-ann:t1", "c1")  # the chain passes through an inactive manager


def test_v8_deleted_manager_in_the_middle_keeps_the_chain() -> None:
    state = apply([*chain_tenant(), {"cmd": "DeleteUser", "user": "mid"}])
    assert sees(state, "top", "mb-ann:t1", "c1")
    assert not sees(state, "mid", "mb-ann:t1", "c1")


def test_v8_deleted_thread_owner_hides_thread_from_everybody() -> None:
    state = apply(chain_tenant())
    t = state.threads["mb-ann:t1"]
    assert sees(state, "rec", t, "c1")
    run(state, {"cmd": "DeleteUser", "user": "ann"})
    for viewer in ("rec", "mid", "top"):
        assert not sees(state, viewer, t, "c1")
        assert not visible(state, viewer, t)
    assert deciding_rule(state, "rec", t, "c1") == "L2"


def test_v8_deactivated_thread_owner_keeps_threads_visible() -> None:
    state = apply([*chain_tenant(), {"cmd": "DeactivateUser", "user": "ann"}])
    assert sees(state, "rec", "mb-ann:t1", "c1")


def test_v8_thread_owner_needs_access_to_see_it_on_the_record() -> None:
    state = apply(chain_tenant())
    assert not sees(state, "ann", "mb-ann:t1", "c1")
    run(state, {"cmd": "AddCollaborator", "record": "c1", "user": "ann"})
    run(state, level("ann", "contact", "not_visible"))
    assert sees(state, "ann", "mb-ann:t1", "c1")  # the owner needs no share


def test_v8_unlinked_thread_is_not_on_the_record() -> None:
    state = apply([*chain_tenant(), contact("c2", "rec", "dora@customer.test")])
    t = state.threads["mb-ann:t1"]
    assert set(links(state, t)) == {"c1"}
    assert not sees(state, "rec", t, "c2")


def test_v8_manual_link_and_unlink() -> None:
    state = apply([*chain_tenant(), contact("c2", "rec", "dora@customer.test"),
                   {"cmd": "LinkThread", "user": "ann", "thread": "mb-ann:t1", "record": "c2"}])
    t = state.threads["mb-ann:t1"]
    assert sees(state, "rec", t, "c2")
    run(state, {"cmd": "UnlinkThread", "user": "ann", "thread": "mb-ann:t1", "record": "c1"})
    assert set(links(state, t)) == {"c2"}
    assert not sees(state, "rec", t, "c1")


def test_v8_link_thread_of_another_user_rejected() -> None:
    state = apply(chain_tenant())
    err = rejection(state, {"cmd": "LinkThread", "user": "rec", "thread": "mb-ann:t1",
                            "record": "c1"})
    assert (err.cmd, err.field) == ("LinkThread", "thread")


def test_v8_same_rfc_message_in_two_mailboxes_visible_if_any_copy_is() -> None:
    state = apply([*office(), mailbox("mb-bob", "bob"),
                   msg("mb-ann", "a1", CUSTOMER, ["ann@acme.test", "bob@acme.test"],
                       message_id="<x@customer.test>"),
                   msg("mb-bob", "b1", CUSTOMER, ["ann@acme.test", "bob@acme.test"],
                       message_id="<x@customer.test>"),
                   level("bob", "contact", "visible")])
    ann_copy, bob_copy = thread_of(state, "mb-ann", "a1"), thread_of(state, "mb-bob", "b1")
    assert ann_copy.id != bob_copy.id  # each mailbox keeps its own copy
    assert not sees(state, "boss", ann_copy, "c1")
    assert sees(state, "boss", bob_copy, "c1")


# --- V9: the mailbox page belongs to the mailbox owner ----------------------------------------


def test_v9_only_owner_sees_unlinked_mailbox_threads() -> None:
    state = apply([*office(),
                   msg("mb-ann", "m1", "stranger@elsewhere.test", ["ann@acme.test"])])
    t = thread_of(state, "mb-ann", "m1")
    assert links(state, t) == {}
    assert visible(state, "ann", t)
    for viewer in ("boss", "mgr", "bob"):  # not the admin, not ann's manager
        assert not visible(state, viewer, t)


def test_v9_mailbox_threads_belong_to_the_mailbox_user() -> None:
    state = apply([*office(), mailbox("mb-bob", "bob"),
                   msg("mb-ann", "m1", "stranger@elsewhere.test", ["ann@acme.test"]),
                   msg("mb-bob", "m2", "stranger@elsewhere.test", ["bob@acme.test"])])
    owners = {t.id: state.thread_owner(t) for t in state.threads.values()}
    assert sorted(owners.values()) == ["ann", "bob"]
    ann_page = [t for t in state.threads.values() if state.mailboxes[t.mailbox].user == "ann"]
    assert [t.mailbox for t in ann_page] == ["mb-ann"]


def test_v9_private_flag_keeps_thread_on_owner_mailbox_page() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=False))
    assert visible(state, "ann", t)
    assert not visible(state, "boss", t)


def test_v9_shared_thread_reaches_others_only_through_records() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=True))
    assert visible(state, "bob", t)  # via c1 (V8)
    assert not visible(state, "mgr", t)  # mgr has no access to c1 or d1
