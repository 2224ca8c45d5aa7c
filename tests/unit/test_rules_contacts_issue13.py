"""Issue #13 points 10-12 (SPEC §5): a CRM change made while a contact is being created in a
book (C4), `Base Current Customer` from won deals (C2), merged-away contacts as deal contacts
(C9)."""

from __future__ import annotations

from typing import Any

from rulekit import apply, contact, deal, kinds, rejection, run, user
from test_rules_contacts import ack, external, merge, queued, team, unmerge, update

from domain.state import TenantState


def customer(rid: str, owner: str, email: str, status: str) -> dict[str, Any]:
    return {**contact(rid, owner, email), "customer_status": status}


def stage(rid: str, value: str) -> dict[str, Any]:
    return {"cmd": "ChangeDealStage", "record": rid, "stage": value}


def linked(state: TenantState) -> TenantState:
    """c1 (ann's, `a@x.test`) created in ann's book as `a-c1`."""
    apply([contact("c1", "ann", "a@x.test"), ack("ann", "xc-1", "a-c1")], state)
    return state


# --- point 10: C4, a change while the first upsert is unacknowledged -------------------------


def test_c4_change_while_creation_is_unacknowledged_goes_out_after_the_ack() -> None:
    state = apply([customer("c1", "ann", "a@x.test", "current")], team())
    assert state.contacts.known[("ann", "c1")].categories == ("Base Person",
                                                              "Base Current Customer")
    assert queued(run(state, update("c1", customer_status="past"))) == []  # held back
    (change,) = queued(run(state, ack("ann", "xc-1", "x-c1")))
    assert (change.operation, change.external_id) == ("upsert", "x-c1")
    assert change.categories == ["Base Person", "Base Past Customer"]
    assert change.fields == {"emails": ["a@x.test"], "name": "c1"}
    # the runner writes it and acknowledges; the book reports back what it holds: no echo
    assert queued(run(state, ack("ann", change.change_id, "x-c1"))) == []
    events = run(state, external("ann", "x-c1", 30, categories=tuple(change.categories),
                                 **change.fields))
    assert kinds(events) == ["ExternalContactSynced"]
    assert state.records["c1"].customer_status == "past"
    assert queued(run(state, update("c1", phone="+49 1"))) != []  # still synced afterwards


def test_c4_changes_during_creation_coalesce_into_one_upsert_of_the_current_state() -> None:
    state = apply([contact("c1", "ann", "a@x.test")], team())
    for cmd in (update("c1", name="Carla"), update("c1", phone="+49 1"),
                update("c1", customer_status="current"), deal("d1", "ann", "c1")):
        assert queued(run(state, cmd)) == []
    (change,) = queued(run(state, ack("ann", "xc-1", "x-c1")))
    assert change.fields == {"emails": ["a@x.test"], "name": "Carla", "phone": "+49 1"}
    assert change.categories == ["Base Person", "Base Current Prospect",
                                 "Base Current Customer"]


def test_c4_refused_creation_still_sends_nothing_until_the_next_change() -> None:
    state = apply([contact("c1", "ann", "a@x.test"), update("c1", name="Carla")], team())
    events = run(state, {**ack("ann", "xc-1"), "ok": False, "error": "quota"})
    assert queued(events) == []
    (change,) = queued(run(state, update("c1", phone="+49 1")))
    assert (change.external_id, change.fields["name"]) == (None, "Carla")


def test_c6_access_lost_during_creation_removes_the_created_contact_at_the_ack() -> None:
    state = apply([connect_bob(), contact("c1", "ann", "a@x.test")], team())
    moved = queued(run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "bob"}))
    # ann's remove has no external id yet: the runner has nothing to delete until the ack
    assert sorted((c.user, c.operation, c.external_id) for c in moved) == [
        ("ann", "remove", None), ("bob", "upsert", None)]
    (change,) = queued(run(state, ack("ann", "xc-1", "x-c1")))
    assert (change.user, change.operation, change.external_id) == ("ann", "remove", "x-c1")
    assert state.contacts.links[("ann", "x-c1")].status == "detached"
    assert queued(run(state, update("c1", phone="+49 1"))) == []  # bob's is being created


def test_c4_deactivated_user_gets_the_held_back_change_at_the_reactivation() -> None:
    state = apply([contact("c1", "ann", "a@x.test"), {"cmd": "DeactivateUser", "user": "ann"},
                   update("c1", phone="+49 1")], team())
    assert queued(run(state, ack("ann", "xc-1", "x-c1"))) == []  # the book is paused (L1)
    assert state.contacts.links[("ann", "x-c1")].status == "active"
    (change,) = queued(run(state, {"cmd": "ReactivateUser", "user": "ann"}))
    assert (change.external_id, change.fields["phone"]) == ("x-c1", "+49 1")


def test_c4_contact_matched_during_creation_gets_what_was_held_back() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())  # xc-1 creates it
    run(state, external("ann", "x1", 9, name="Carla", emails=["carla@cust.test"]))  # C7
    assert queued(run(state, update("c1", customer_status="current"))) == []  # held back
    changes = queued(run(state, ack("ann", "xc-1", "x-dup")))
    assert [(c.operation, c.external_id) for c in changes] == [("remove", "x-dup"),
                                                               ("upsert", "x1")]
    assert changes[1].categories == ["Base Person", "Base Current Customer"]
    assert changes[1].fields == {"emails": ["carla@cust.test"], "name": "Carla"}


def test_c9_contact_merged_away_during_creation_leaves_the_book_at_the_ack() -> None:
    state = linked(team())
    run(state, contact("c2", "ann", "b@x.test"))  # xc-2 creates it
    survivor = queued(run(state, merge("c1", "c2")))
    assert [(c.record, c.external_id) for c in survivor] == [("c1", "a-c1")]
    (change,) = queued(run(state, ack("ann", "xc-2", "a-c2")))
    assert (change.operation, change.record, change.external_id) == ("remove", "c2", "a-c2")


def connect_bob() -> dict[str, Any]:
    return {"cmd": "ConnectContactSync", "user": "bob", "provider": "exchange",
            "categories": []}


# --- point 11: C2, Base Current Customer follows won deals --------------------------------


def cats(state: TenantState, cmd: dict[str, Any]) -> list[str]:
    (change,) = queued(run(state, cmd))
    return change.categories


def test_c2_won_deal_makes_a_current_customer() -> None:
    state = linked(team())
    assert cats(state, deal("d1", "ann", "c1")) == ["Base Person", "Base Current Prospect"]
    assert cats(state, stage("d1", "won")) == ["Base Person", "Base Current Customer"]
    assert cats(state, stage("d1", "lost")) == ["Base Person", "Base Lost Prospect"]


def test_c2_past_customer_status_overrides_a_won_deal() -> None:
    state = linked(team())
    run(state, {**deal("d1", "ann", "c1"), "stage": "won"})
    assert cats(state, update("c1", customer_status="past")) == ["Base Person",
                                                                 "Base Past Customer"]
    assert cats(state, update("c1", customer_status="none")) == ["Base Person",
                                                                 "Base Current Customer"]


def test_c2_won_and_lost_deals_make_a_customer_not_a_lost_prospect() -> None:
    state = linked(team())
    run(state, {**deal("d1", "ann", "c1"), "stage": "lost"})
    assert cats(state, {**deal("d2", "ann", "c1"), "stage": "won"}) == [
        "Base Person", "Base Current Customer"]
    assert cats(state, {"cmd": "UnlinkDealContact", "deal": "d2", "contact": "c1"}) == [
        "Base Person", "Base Lost Prospect"]


def test_c2_won_deal_of_a_merged_contact_counts_for_the_survivor() -> None:
    state = linked(team())
    run(state, contact("c2", "ann", "b@x.test"))
    run(state, ack("ann", "xc-2", "a-c2"))
    run(state, {**deal("d1", "ann", "c2"), "stage": "won"})
    changes = queued(run(state, merge("c1", "c2")))
    assert [(c.external_id, c.categories) for c in changes] == [
        ("a-c1", ["Base Person", "Base Current Customer"])]
    (back,) = [c for c in queued(run(state, unmerge("c2"))) if c.record == "c1"]
    assert back.categories == ["Base Person"]


# --- point 12: C9, merged-away contacts on deals ------------------------------------------


def merged_office() -> TenantState:
    """c2 (ann's) merged into c1 (bob's, ann a collaborator); d0 linked to c2 before."""
    state = apply([user("ann"), user("bob"), user("cy"), contact("c1", "bob", "a@x.test"),
                   contact("c2", "ann", "b@x.test"), deal("d0", "ann", "c2"),
                   deal("d9", "ann")], TenantState("acme"))
    apply([{"cmd": "AddCollaborator", "record": "c2", "user": "cy"}, merge("c1", "c2")], state)
    return state


def test_c9_create_deal_with_a_merged_away_contact_is_rejected_naming_the_survivor() -> None:
    state = merged_office()
    r = rejection(state, deal("d1", "ann", "c1", "c2"))
    assert (r.field, r.reason) == ("contacts.1", "contact 'c2' is merged into 'c1'; "
                                                 "link that one")
    assert "d1" not in state.records
    run(state, deal("d1", "ann", "c1"))
    assert state.records["d1"].contacts == ["c1"]


def test_c9_link_deal_contact_with_a_merged_away_contact_is_rejected() -> None:
    state = merged_office()
    r = rejection(state, {"cmd": "LinkDealContact", "deal": "d9", "contact": "c2"})
    assert (r.field, r.reason) == ("contact", "contact 'c2' is merged into 'c1'; link that one")
    events = run(state, {"cmd": "LinkDealContact", "deal": "d9", "contact": "c1"})
    assert kinds(events) == ["DealContactLinked"]


def test_c9_rejection_does_not_name_a_survivor_the_caller_cannot_access() -> None:
    state = merged_office()  # cy collaborates on c2 only; c1 is bob's
    r = rejection(state, {"cmd": "LinkDealContact", "deal": "d9", "contact": "c2",
                          "actor": "cy"})
    assert r.reason == "contact 'c2' is merged into another contact" and "c1" not in r.reason
    r = rejection(state, {"cmd": "LinkDealContact", "deal": "d9", "contact": "c2",
                          "actor": "bob"})
    assert "'c1'" in r.reason


def test_c9_deal_linked_before_the_merge_keeps_its_link_and_can_drop_it() -> None:
    state = merged_office()
    again = run(state, {"cmd": "LinkDealContact", "deal": "d0", "contact": "c2"})
    assert "DealContactLinked" not in kinds(again)  # already linked: nothing changes
    assert state.records["d0"].contacts == ["c2"]
    events = run(state, {"cmd": "UnlinkDealContact", "deal": "d0", "contact": "c2"})
    assert kinds(events) == ["DealContactUnlinked"]
    run(state, unmerge("c2"))
    assert kinds(run(state, {"cmd": "LinkDealContact", "deal": "d0", "contact": "c2"})) == [
        "DealContactLinked"]
