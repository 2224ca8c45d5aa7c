"""V1 (thread flag), V2/V4 (address settings), V3 (global levels), V10 (capabilities).

Standard tenant (rulekit.office): ann owns thread `mb-ann:t1` with CUSTOMER; contact c1 and deal d1
belong to bob; boss is admin. bob and boss have access to c1/d1, ann only via collaboration.
"""

from __future__ import annotations

from rulekit import (
    CUSTOMER,
    apply,
    contact,
    deciding_rule,
    level,
    mark,
    msg,
    office,
    office_with_thread,
    rejection,
    run,
    sees,
    share,
    unshare,
)

from domain.visibility import CAPABILITIES, capabilities, shared

# --- V1: the thread flag decides alone ------------------------------------------------------


def test_v1_default_without_flag_or_setting_is_not_shared() -> None:
    state, t = office_with_thread()
    assert not sees(state, "bob", t, "c1")
    assert not sees(state, "boss", t, "c1")
    assert deciding_rule(state, "bob", t, "c1") == "V3"


def test_v1_mark_shared_shows_thread_to_users_with_access() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=True))
    assert sees(state, "bob", t, "c1")
    assert sees(state, "boss", t, "d1")
    assert deciding_rule(state, "bob", t, "c1") == "V1"


def test_v1_shared_flag_beats_explicit_address_unshare() -> None:
    state, t = office_with_thread(unshare("ann", "c1", CUSTOMER, cascade=True),
                                  mark("ann", ["mb-ann:t1"], shared=True))
    assert sees(state, "bob", t, "c1")
    assert sees(state, "bob", t, "d1")


def test_v1_private_flag_hides_even_from_users_with_access() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible"),
                                  share("ann", "c1", CUSTOMER),
                                  {"cmd": "AddCollaborator", "record": "c1", "user": "ann"})
    assert sees(state, "bob", t, "c1")
    run(state, mark("ann", ["mb-ann:t1"], shared=False))
    assert not sees(state, "bob", t, "c1")  # record owner
    assert not sees(state, "boss", t, "c1")  # admin
    assert not sees(state, "bob", t, "d1")
    assert sees(state, "ann", t, "c1")  # the thread owner still does
    assert deciding_rule(state, "bob", t, "c1") == "V1"


def test_v1_shared_flag_grants_no_access_to_the_record() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=True))
    assert not sees(state, "mgr", t, "c1")  # mgr manages ann, not bob (the record owner)


def test_v1_later_flag_replaces_earlier_flag() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=False),
                                  mark("ann", ["mb-ann:t1"], shared=True))
    assert sees(state, "bob", t, "c1")


def test_v1_bulk_mark_applies_to_every_thread() -> None:
    state, t1 = office_with_thread(
        msg("mb-ann", "m2", CUSTOMER, ["ann@acme.test"], thread_id="t2"),
        mark("ann", ["mb-ann:t1", "mb-ann:t2"], shared=True))
    assert sees(state, "bob", t1, "c1")
    assert sees(state, "bob", "mb-ann:t2", "c1")


def test_v1_only_the_thread_owner_may_mark_it() -> None:
    state, _ = office_with_thread()
    err = rejection(state, mark("bob", ["mb-ann:t1"], shared=True))
    assert (err.cmd, err.field) == ("MarkThreadShared", "threads.0")
    err = rejection(state, mark("ann", ["mb-ann:t1", "mb-ann:nope"], shared=False))
    assert err.field == "threads.1"


# --- V2 / V4: manual address settings override the global level both ways ------------------


def test_v4_share_address_overrides_global_not_visible() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER))
    assert sees(state, "bob", t, "c1")
    assert deciding_rule(state, "bob", t, "c1") == "V2"


def test_v4_unshare_address_overrides_global_visible() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible"))
    assert sees(state, "bob", t, "c1")
    run(state, unshare("ann", "c1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "c1")
    assert deciding_rule(state, "bob", t, "c1") == "V2"


def test_v2_address_match_is_case_insensitive() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER.upper()))
    assert sees(state, "bob", t, "c1")


def test_v2_any_shared_participant_address_beats_an_unshared_one() -> None:
    state = apply([*office(), contact("c2", "bob", "x@customer.test", "y@customer.test"),
                   msg("mb-ann", "m1", "x@customer.test", ["ann@acme.test"],
                       cc=["y@customer.test"], thread_id="t1"),
                   unshare("ann", "c2", "x@customer.test", cascade=False),
                   share("ann", "c2", "y@customer.test")])
    assert sees(state, "bob", "mb-ann:t1", "c2")


def test_v2_setting_of_a_non_participant_address_does_not_apply() -> None:
    state = apply([*office(), contact("c2", "bob", "x@customer.test", "y@customer.test"),
                   msg("mb-ann", "m1", "x@customer.test", ["ann@acme.test"], thread_id="t1"),
                   share("ann", "c2", "y@customer.test")])
    assert not sees(state, "bob", "mb-ann:t1", "c2")


def test_v2_settings_belong_to_the_thread_owner_not_to_other_users() -> None:
    state, t = office_with_thread(share("bob", "c1", CUSTOMER))
    assert not sees(state, "bob", t, "c1")
    assert not sees(state, "boss", t, "c1")


def test_v2_share_address_not_on_record_is_rejected() -> None:
    state, _ = office_with_thread()
    err = rejection(state, share("ann", "c1", "stranger@elsewhere.test"))
    assert (err.cmd, err.field) == ("ShareAddress", "address")


# --- V3: the four global levels ---------------------------------------------------------------


def test_v3_global_level_default_not_visible() -> None:
    state, t = office_with_thread()
    shared_now, step = shared(state, t, state.records["c1"])
    assert not shared_now
    assert step.rule == "V3" and "not_visible" in step.detail


def test_v3_global_level_visible_shares_with_everyone_with_access() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible"))
    assert sees(state, "bob", t, "c1")
    assert sees(state, "boss", t, "c1")


def test_v3_global_level_is_per_record_type() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible"))
    assert sees(state, "bob", t, "c1")
    assert not sees(state, "bob", t, "d1")
    run(state, level("ann", "deal", "visible"))
    assert sees(state, "bob", t, "d1")


def test_v3_global_level_visible_if_owner_uses_record_owner() -> None:
    state = apply([*office(), contact("c-ann", "ann", "dora@customer.test"),
                   msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"],
                       cc=["dora@customer.test"], thread_id="t1"),
                   level("ann", "contact", "visible_if_owner")])
    t = state.threads["mb-ann:t1"]
    assert sees(state, "boss", t, "c-ann")  # ann owns c-ann
    assert not sees(state, "boss", t, "c1")  # bob owns c1
    assert not sees(state, "bob", t, "c1")


def test_v3_global_level_visible_if_owner_or_collaborator() -> None:
    state = apply([*office(), contact("c2", "bob", "dora@customer.test"),
                   msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"],
                       cc=["dora@customer.test"], thread_id="t1"),
                   level("ann", "contact", "visible_if_owner_or_collaborator"),
                   {"cmd": "AddCollaborator", "record": "c1", "user": "ann"}])
    t = state.threads["mb-ann:t1"]
    assert sees(state, "bob", t, "c1")  # ann collaborates on c1
    assert not sees(state, "bob", t, "c2")  # but not on c2


def test_v3_visible_if_owner_does_not_count_collaboration() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible_if_owner"),
                                  {"cmd": "AddCollaborator", "record": "c1", "user": "ann"})
    assert not sees(state, "bob", t, "c1")


def test_v3_level_of_another_user_does_not_matter() -> None:
    state, t = office_with_thread(level("bob", "contact", "visible"),
                                  level("boss", "contact", "visible"))
    assert not sees(state, "bob", t, "c1")


def test_v3_set_global_visibility_unknown_user_or_level_rejected() -> None:
    state, _ = office_with_thread()
    assert rejection(state, level("ghost", "contact", "visible")).field == "user"
    assert rejection(state, level("ann", "contact", "sometimes")).field == "level"
    assert rejection(state, level("ann", "company", "visible")).field == "record_type"


# --- V10: capabilities ------------------------------------------------------------------------


def test_v10_thread_owner_has_all_five_capabilities() -> None:
    caps = capabilities(is_owner=True)
    assert set(caps) == set(CAPABILITIES)
    assert all(caps.values())


def test_v10_other_viewers_view_delivery_forward_but_not_read_or_reply() -> None:
    caps = capabilities(is_owner=False)
    assert set(caps) == set(CAPABILITIES)
    assert caps == {"view": True, "delivery_status": True, "read_status": False,
                    "reply": False, "forward": True}


def test_v10_viewer_of_shared_thread_is_not_its_owner() -> None:
    state, t = office_with_thread(mark("ann", ["mb-ann:t1"], shared=True))
    assert sees(state, "bob", t, "c1")
    assert state.thread_owner(t) == "ann"  # so bob gets capabilities(is_owner=False)
    assert deciding_rule(state, "bob", t, "c1") == "V1"
    ann_view = deciding_rule(
        apply([{"cmd": "AddCollaborator", "record": "c1", "user": "ann"}], state), "ann", t, "c1")
    assert ann_view == "V8"  # the owner is decided by V8 (owns the thread), not by sharing
