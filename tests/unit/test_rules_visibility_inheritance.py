"""V5 (contact shares inherit to deals), V6 (unshare cascade), V7 (owner/collaborator changes).

Standard tenant (rulekit.office): ann owns thread `mb-ann:t1` with CUSTOMER; contact c1 and deal d1
(linked to c1) belong to bob, who therefore sees whatever ann shares on them.
"""

from __future__ import annotations

from rulekit import (
    CUSTOMER,
    apply,
    contact,
    deal,
    deciding_rule,
    kinds,
    level,
    msg,
    office,
    office_with_thread,
    rejection,
    run,
    sees,
    share,
    unshare,
    user,
)

# --- V5: inheritance from contact to deal ----------------------------------------------------


def test_v5_contact_share_inherits_to_existing_deal() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER))
    assert sees(state, "bob", t, "c1")
    assert sees(state, "bob", t, "d1")
    assert deciding_rule(state, "bob", t, "d1") == "V2"


def test_v5_contact_share_inherits_to_deal_created_later() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER), deal("d2", "bob", "c1"))
    assert sees(state, "bob", t, "d2")


def test_v5_contact_share_inherits_to_deal_linked_later() -> None:
    state, t = office_with_thread(deal("d2", "bob"), share("ann", "c1", CUSTOMER))
    assert not sees(state, "bob", t, "d2")  # d2 has no contacts yet: not even linked
    run(state, {"cmd": "LinkDealContact", "deal": "d2", "contact": "c1"})
    assert sees(state, "bob", t, "d2")


def test_v5_contact_share_overrides_a_deal_level_unshare() -> None:
    state, t = office_with_thread(unshare("ann", "d1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "d1")
    events = run(state, share("ann", "c1", CUSTOMER))
    assert kinds(events) == ["AddressSettingChanged", "AddressSettingChanged"]
    assert sees(state, "bob", t, "d1")


def test_v5_deal_share_does_not_share_on_contact() -> None:
    state, t = office_with_thread(share("ann", "d1", CUSTOMER))
    assert sees(state, "bob", t, "d1")
    assert not sees(state, "bob", t, "c1")


def test_v5_contact_share_beats_deal_global_not_visible_but_not_other_deals() -> None:
    state = apply([*office(), contact("c2", "bob", "dora@customer.test"),
                   deal("d2", "bob", "c2"),
                   msg("mb-ann", "m1", "dora@customer.test", ["ann@acme.test"], thread_id="t1"),
                   share("ann", "c1", CUSTOMER)])
    assert not sees(state, "bob", "mb-ann:t1", "d2")


def test_v5_unlinking_contact_ends_inheritance_and_link() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER),
                                  {"cmd": "UnlinkDealContact", "deal": "d1", "contact": "c1"})
    assert not sees(state, "bob", t, "d1")
    assert sees(state, "bob", t, "c1")


# --- V6: UnshareAddress cascade -----------------------------------------------------------


def test_v6_unshare_contact_with_cascade_unshares_linked_deals() -> None:
    state, t = office_with_thread(level("ann", "deal", "visible"))
    assert sees(state, "bob", t, "d1")
    run(state, unshare("ann", "c1", CUSTOMER, cascade=True))
    assert not sees(state, "bob", t, "c1")
    assert not sees(state, "bob", t, "d1")


def test_v6_unshare_contact_with_cascade_overrides_deal_own_share() -> None:
    state, t = office_with_thread(share("ann", "d1", CUSTOMER),
                                  unshare("ann", "c1", CUSTOMER, cascade=True))
    assert not sees(state, "bob", t, "d1")


def test_v6_unshare_without_cascade_keeps_deal_visibility() -> None:
    state, t = office_with_thread(level("ann", "deal", "visible"),
                                  unshare("ann", "c1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "c1")
    assert sees(state, "bob", t, "d1")


def test_v6_unshare_without_cascade_keeps_inherited_share_on_deal() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER))
    assert sees(state, "bob", t, "d1")  # inherited (V5)
    run(state, unshare("ann", "c1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "c1")
    assert sees(state, "bob", t, "d1")  # exactly the effective visibility it had


def test_v6_unshare_without_cascade_keeps_hidden_deal_hidden() -> None:
    state, t = office_with_thread(unshare("ann", "c1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "d1")
    # a later global level still applies to the deal: it kept its (default) setting
    run(state, level("ann", "deal", "visible"))
    assert sees(state, "bob", t, "d1")
    assert not sees(state, "bob", t, "c1")


def test_v5_reshare_on_contact_after_uncascaded_unshare_reaches_deal_again() -> None:
    state, t = office_with_thread(unshare("ann", "c1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "d1")
    run(state, share("ann", "c1", CUSTOMER))
    assert sees(state, "bob", t, "c1")
    assert sees(state, "bob", t, "d1")


def test_v6_unshare_on_deal_with_cascade_unshares_contacts_with_that_address() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER))
    run(state, unshare("ann", "d1", CUSTOMER, cascade=True))
    assert not sees(state, "bob", t, "d1")
    assert not sees(state, "bob", t, "c1")


def test_v6_unshare_on_deal_without_cascade_changes_only_the_deal() -> None:
    state, t = office_with_thread(share("ann", "c1", CUSTOMER))
    run(state, unshare("ann", "d1", CUSTOMER, cascade=False))
    assert not sees(state, "bob", t, "d1")
    assert sees(state, "bob", t, "c1")


def test_v6_unshare_on_deal_cascade_skips_contacts_without_the_address() -> None:
    state = apply([*office(), contact("c2", "bob", "dora@customer.test"),
                   {"cmd": "LinkDealContact", "deal": "d1", "contact": "c2"},
                   msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"],
                       cc=["dora@customer.test"], thread_id="t1"),
                   share("ann", "c2", "dora@customer.test")])
    events = run(state, unshare("ann", "d1", CUSTOMER, cascade=True))
    assert {e.record for e in events} == {"d1", "c1"}  # type: ignore[attr-defined]
    assert sees(state, "bob", "mb-ann:t1", "c2")


def test_v6_unshare_address_needs_cascade_flag() -> None:
    state, _ = office_with_thread()
    cmd = unshare("ann", "c1", CUSTOMER, cascade=True)
    del cmd["cascade"]
    assert rejection(state, cmd).field == "cascade"


# --- V7: owner and collaborator changes are evaluated at once --------------------------------


def test_v7_owner_change_reevaluates_visible_if_owner() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible_if_owner"))
    assert not sees(state, "boss", t, "c1")
    run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "ann"})
    assert sees(state, "boss", t, "c1")
    run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "bob"})
    assert not sees(state, "boss", t, "c1")


def test_v7_owner_change_moves_access_to_the_new_owner() -> None:
    state, t = office_with_thread(user("cleo"), level("ann", "contact", "visible"))
    assert sees(state, "bob", t, "c1")
    assert not sees(state, "cleo", t, "c1")
    run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "cleo"})
    assert sees(state, "cleo", t, "c1")
    assert not sees(state, "bob", t, "c1")


def test_v7_owner_change_also_changes_managers_with_access() -> None:
    state, t = office_with_thread(user("cleo", manager="mgr"), level("ann", "contact", "visible"))
    assert not sees(state, "mgr", t, "c1")
    run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "cleo"})
    assert sees(state, "mgr", t, "c1")


def test_v7_collaborator_change_reevaluates_visible_if_owner_or_collaborator() -> None:
    state, t = office_with_thread(level("ann", "contact", "visible_if_owner_or_collaborator"))
    assert not sees(state, "bob", t, "c1")
    run(state, {"cmd": "AddCollaborator", "record": "c1", "user": "ann"})
    assert sees(state, "bob", t, "c1")
    run(state, {"cmd": "RemoveCollaborator", "record": "c1", "user": "ann"})
    assert not sees(state, "bob", t, "c1")


def test_v7_collaborator_gains_and_loses_access() -> None:
    state, t = office_with_thread(user("cleo"), level("ann", "contact", "visible"))
    run(state, {"cmd": "AddCollaborator", "record": "c1", "user": "cleo"})
    assert sees(state, "cleo", t, "c1")
    run(state, {"cmd": "RemoveCollaborator", "record": "c1", "user": "cleo"})
    assert not sees(state, "cleo", t, "c1")


def test_v7_owner_change_to_unknown_or_inactive_user_rejected() -> None:
    state, _ = office_with_thread(user("cleo"), {"cmd": "DeactivateUser", "user": "cleo"})
    assert rejection(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "ghost"}).field \
        == "owner"
    assert rejection(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "cleo"}).field \
        == "owner"
    assert rejection(state, {"cmd": "ChangeOwner", "record": "zz", "owner": "bob"}).field \
        == "record"
