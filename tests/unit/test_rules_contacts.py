"""C1-C10 (SPEC §5): contact sync with users' external books and contact merges."""

from __future__ import annotations

from typing import Any

from rulekit import apply, at, contact, deal, kinds, rejection, run, user

from domain import events as ev
from domain.state import TenantState


def connect(uid: str, *categories: str) -> dict[str, Any]:
    return {"cmd": "ConnectContactSync", "user": uid, "provider": "exchange",
            "categories": list(categories)}


def external(uid: str, external_id: str, modified: int, folder: str = "private",
             categories: tuple[str, ...] = ("Clients",), **fields: Any) -> dict[str, Any]:
    return {"cmd": "SyncExternalContact", "user": uid, "external_id": external_id,
            "folder": folder, "fields": fields, "categories": list(categories),
            "modified_at": at(modified)}


def update(rid: str, **fields: Any) -> dict[str, Any]:
    return {"cmd": "UpdateContact", "record": rid, "fields": fields}


def merge(survivor: str, *merged: str) -> dict[str, Any]:
    return {"cmd": "MergeContacts", "survivor": survivor, "merged": list(merged)}


def unmerge(rid: str) -> dict[str, Any]:
    return {"cmd": "UnmergeContact", "record": rid}


def ack(uid: str, change_id: str, external_id: str | None = None) -> dict[str, Any]:
    return {"cmd": "AcknowledgeExternalContactChange", "user": uid, "change_id": change_id,
            "external_id": external_id}


def queued(events: list[ev.DomainEvent]) -> list[ev.ExternalContactChangeQueued]:
    return [e for e in events if isinstance(e, ev.ExternalContactChangeQueued)]


def team() -> TenantState:
    """admin `boss`; manager `mgr` above `ann`; member `bob`; ann syncs category Clients."""
    return apply([user("boss", "admin"), user("mgr", "manager"), user("ann", manager="mgr"),
                  user("bob"), connect("ann", "Clients")])


def record_of(state: TenantState, uid: str, external_id: str) -> str:
    return state.contacts.links[(uid, external_id)].record


# --- C1 -------------------------------------------------------------------------------------


def test_c1_external_contact_in_imported_category_becomes_crm_contact() -> None:
    state = team()
    events = run(state, external("ann", "x1", 0, name="Carla", emails=["Carla@Cust.test"]))
    assert kinds(events)[:2] == ["ContactCreated", "ExternalContactSynced"]
    rid = record_of(state, "ann", "x1")
    rec = state.records[rid]
    assert (rec.type, rec.owner, rec.name, rec.emails) == ("contact", "ann", "Carla",
                                                           ["carla@cust.test"])


def test_c1_shared_or_public_folder_is_rejected_and_changes_nothing() -> None:
    state = team()
    for folder in ("shared", "public"):
        r = rejection(state, external("ann", "x1", 0, folder=folder, name="Carla"))
        assert r.field == "folder" and "private" in r.reason
    assert not state.contacts.links and not any(x.type == "contact"
                                                for x in state.records.values())


def test_c1_contact_outside_imported_categories_is_rejected() -> None:
    state = team()
    r = rejection(state, external("ann", "x1", 0, categories=("Family",), name="Mum"))
    assert r.field == "categories" and "Family" in r.reason


def test_c1_user_without_contact_sync_is_rejected() -> None:
    state = team()
    r = rejection(state, external("bob", "x1", 0, name="Carla"))
    assert r.field == "user" and "ConnectContactSync" in r.reason


# --- C2 -------------------------------------------------------------------------------------


def test_c2_base_categories_follow_deals_and_customer_status() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())
    first = queued(run(state, ack("ann", "xc-1", "x-c1")))  # nothing changed meanwhile
    assert first == []
    assert state.contacts.known[("ann", "c1")].categories == ("Base Person",)
    changes = queued(run(state, deal("d1", "ann", "c1")))
    assert changes[0].categories == ["Base Person", "Base Current Prospect"]
    assert changes[0].external_id == "x-c1"
    changes = queued(run(state, {"cmd": "ChangeDealStage", "record": "d1", "stage": "lost"}))
    assert changes[0].categories == ["Base Person", "Base Lost Prospect"]
    changes = queued(run(state, update("c1", customer_status="current")))
    assert changes[0].categories == ["Base Person", "Base Lost Prospect",
                                     "Base Current Customer"]
    changes = queued(run(state, update("c1", customer_status="past")))
    assert changes[0].categories[-1] == "Base Past Customer"
    assert "customer_status" not in changes[0].fields


def test_c2_leads_carry_base_lead_and_companies_base_company() -> None:
    state = team()
    lead_changes = queued(run(state, {"cmd": "CreateLead", "record": "l1", "owner": "ann",
                                      "name": "Lee", "emails": ["lee@x.test"]}))
    assert lead_changes[0].categories == ["Base Lead"]
    company = {**contact("co1", "ann", "info@co.test"), "kind": "company"}
    assert queued(run(state, company))[0].categories == ["Base Company"]


# --- C3 -------------------------------------------------------------------------------------


def test_c3_renamed_base_category_is_reverted_by_an_outbound_change() -> None:
    state = team()
    events = run(state, {"cmd": "RenameExternalCategory", "user": "ann",
                         "old": "Base Person", "new": "People"})
    (change,) = queued(events)
    assert (change.operation, change.category_old, change.category_new) == (
        "revert_category_rename", "People", "Base Person")


def test_c3_renamed_imported_category_is_followed_and_unknown_one_rejected() -> None:
    state = team()
    events = run(state, {"cmd": "RenameExternalCategory", "user": "ann", "old": "Clients",
                         "new": "Customers"})
    assert queued(events) == []
    assert state.contacts.connected["ann"] == ["Customers"]
    r = rejection(state, {"cmd": "RenameExternalCategory", "user": "ann", "old": "Nope",
                          "new": "X"})
    assert r.field == "old" and "unknown category" in r.reason


# --- C4 -------------------------------------------------------------------------------------


def test_c4_external_change_is_not_echoed_back_to_its_book() -> None:
    state = team()
    run(state, external("ann", "x1", 0, categories=("Clients", "Base Person"), name="Carla",
                        emails=["carla@cust.test"]))
    events = run(state, external("ann", "x1", 5, categories=("Clients", "Base Person"),
                                 name="Carla Diaz", emails=["carla@cust.test"]))
    assert queued(events) == []
    assert state.records[record_of(state, "ann", "x1")].name == "Carla Diaz"


def test_c4_crm_value_that_wins_the_conflict_goes_back() -> None:
    state = team()
    run(state, external("ann", "x1", 0, categories=("Clients", "Base Person"), name="Carla"))
    rid = record_of(state, "ann", "x1")
    run(state, update(rid, name="Carla CRM"))  # goes out, now the newest value
    events = run(state, external("ann", "x1", 1, categories=("Clients", "Base Person"),
                                 name="Carla old edit"))  # modified before the CRM change
    (change,) = queued(events)
    assert (change.user, change.external_id, change.fields["name"]) == ("ann", "x1",
                                                                        "Carla CRM")


def test_c4_crm_change_goes_to_every_connected_book_but_external_only_to_others() -> None:
    state = apply([connect("mgr"), connect("bob")], team())
    run(state, external("ann", "x1", 0, categories=("Clients", "Base Person"), name="Carla"))
    rid = record_of(state, "ann", "x1")
    assert {c.user for c in queued(run(state, ack("mgr", "xc-1", "m1")))} == set()
    events = run(state, external("ann", "x1", 9, categories=("Clients", "Base Person"),
                                 name="Carla B"))
    assert [(c.user, c.external_id) for c in queued(events)] == [("mgr", "m1")]
    events = run(state, update(rid, phone="+49 1"))
    assert sorted(c.user for c in queued(events)) == ["ann", "mgr"]  # bob has no access


# --- C5 -------------------------------------------------------------------------------------


def test_c5_external_deletion_is_recorded_not_applied() -> None:
    state = team()
    run(state, external("ann", "x1", 0, name="Carla"))
    rid = record_of(state, "ann", "x1")
    events = run(state, {"cmd": "DeleteExternalContact", "user": "ann", "external_id": "x1"})
    assert kinds(events) == ["ExternalContactDeleted"]
    assert rid in state.records and state.contacts.links[("ann", "x1")].status == "detached"
    assert queued(run(state, update(rid, name="Still here"))) == []  # not recreated in the book
    r = rejection(state, {"cmd": "DeleteExternalContact", "user": "ann", "external_id": "x9"})
    assert r.field == "external_id"


# --- C6 -------------------------------------------------------------------------------------


def test_c6_manager_and_admin_books_receive_what_they_may_access() -> None:
    state = apply([connect("mgr"), connect("boss"), connect("bob")], team())
    events = run(state, contact("c1", "ann", "carla@cust.test"))
    assert sorted(c.user for c in queued(events)) == ["ann", "boss", "mgr"]
    assert all(c.operation == "upsert" and c.external_id is None for c in queued(events))


def test_c6_connecting_fills_the_book_with_every_accessible_record() -> None:
    state = apply([contact("c1", "ann", "a@x.test"), contact("c2", "bob", "b@x.test")], team())
    changes = queued(run(state, connect("mgr")))
    assert [(c.user, c.record) for c in changes] == [("mgr", "c1")]


def test_c6_access_changes_move_contacts_between_books() -> None:
    state = apply([connect("bob"), contact("c1", "ann", "a@x.test")], team())
    run(state, ack("ann", "xc-1", "a-c1"))
    events = run(state, {"cmd": "ChangeOwner", "record": "c1", "owner": "bob"})
    ops = sorted((c.user, c.operation, c.external_id) for c in queued(events))
    assert ops == [("ann", "remove", "a-c1"), ("bob", "upsert", None)]
    events = run(state, {"cmd": "AddCollaborator", "record": "c1", "user": "ann"})
    assert [(c.user, c.operation) for c in queued(events)] == [("ann", "upsert")]


def test_c6_manager_change_moves_only_the_affected_books() -> None:
    state = apply([user("top", "manager"), connect("top"), connect("mgr"),
                   contact("c1", "ann", "a@x.test"), contact("c2", "bob", "b@x.test")], team())
    events = run(state, {"cmd": "ChangeUserManager", "user": "ann", "manager": "top"})
    ops = sorted((c.user, c.operation, c.record) for c in queued(events))
    assert ops == [("mgr", "remove", "c1"), ("top", "upsert", "c1")]


def test_c6_ack_links_the_created_external_contact() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())
    run(state, ack("ann", "xc-1", "x-new"))
    assert record_of(state, "ann", "x-new") == "c1"
    events = run(state, external("ann", "x-new", 30, categories=("Base Person",),
                                 name="Carla", emails=["carla@cust.test"]))
    assert "ContactCreated" not in kinds(events)
    assert state.records["c1"].name == "Carla"


# --- C7 -------------------------------------------------------------------------------------


def test_c7_matching_email_merges_into_existing_contact() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())
    run(state, ack("ann", "xc-1", "a-c1"))  # c1 is in ann's book as a-c1 ...
    other = apply([contact("c1", "ann", "carla@cust.test")], team())  # ... or not yet linked
    events = run(other, external("ann", "x1", 9, name="Carla", emails=["carla@cust.test"]))
    assert "ContactCreated" not in kinds(events)
    assert record_of(other, "ann", "x1") == "c1"
    events = run(state, external("ann", "x1", 9, name="Carla", emails=["carla@cust.test"]))
    assert "ContactCreated" in kinds(events)  # c1 already linked for ann: a second contact


def test_c7_duplicates_in_the_external_book_each_come_in() -> None:
    state = team()
    run(state, external("ann", "x1", 0, name="Carla", emails=["carla@cust.test"]))
    run(state, external("ann", "x2", 1, name="Carla (dup)", emails=["carla@cust.test"]))
    assert record_of(state, "ann", "x1") != record_of(state, "ann", "x2")


# --- C8 -------------------------------------------------------------------------------------


def test_c8_newest_value_wins_and_older_is_kept_as_custom_field() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())  # name "c1" at minute 1
    run(state, external("ann", "x1", 60, name="Carla", emails=["carla@cust.test"]))
    rec = state.records["c1"]
    assert rec.name == "Carla" and rec.fields["name (previous)"] == "c1"
    current = state.contacts.current["c1"]["name"]
    assert (current.origin, current.modified_at) == ("exchange:ann:x1", at(60).replace(
        "Z", "+00:00"))


def test_c8_older_external_value_loses_and_is_kept() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test"), update("c1", phone="+49 2")],
                  team())
    run(state, external("ann", "x1", -30, name="c1", phone="+49 1",
                        emails=["carla@cust.test"]))
    rec = state.records["c1"]
    assert rec.fields["phone"] == "+49 2" and rec.fields["phone (previous)"] == "+49 1"


def test_c8_previous_field_is_numbered_when_taken() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test"),
                   update("c1", **{"phone (previous)": "mine"}, phone="+49 0")], team())
    run(state, external("ann", "x1", 90, phone="+49 9", emails=["carla@cust.test"]))
    fields = state.records["c1"].fields
    assert fields["phone"] == "+49 9" and fields["phone (previous)"] == "mine"
    assert fields["phone (previous 2)"] == "+49 0"


def test_c8_crm_update_takes_part_with_source_crm() -> None:
    state = team()
    run(state, external("ann", "x1", 0, name="Carla", emails=["carla@cust.test"]))
    rid = record_of(state, "ann", "x1")
    run(state, update(rid, name="Carla Diaz"))
    claim = state.contacts.current[rid]["name"]
    assert claim.origin == f"crm:{rid}" and state.records[rid].fields["name (previous)"] == "Carla"


# --- C9 -------------------------------------------------------------------------------------


def test_c9_survivor_keeps_its_own_link_and_others_are_detached() -> None:
    state = team()
    run(state, external("ann", "x1", 0, name="Carla", emails=["carla@cust.test"]))
    run(state, external("ann", "x2", 5, name="Carla B", emails=["carla@cust.test"]))
    a, b = record_of(state, "ann", "x1"), record_of(state, "ann", "x2")
    events = run(state, merge(a, b))
    merged = next(e for e in events if isinstance(e, ev.ContactsMerged))
    assert merged.moved == [] and merged.detached == [["ann", "x2"]]
    assert state.contacts.links[("ann", "x2")].status == "detached"
    assert state.records[a].name == "Carla B" and state.records[a].fields[
        "name (previous)"] == "Carla"
    assert all(c.external_id == "x1" for c in queued(events))  # the external side is untouched
    r = rejection(state, external("ann", "x2", 9, name="again"))
    assert r.field == "external_id" and "detached" in r.reason


def test_c9_survivor_without_link_takes_the_most_recently_modified() -> None:
    state = apply([contact("s", "bob", "s@x.test")], team())
    run(state, external("ann", "x1", 0, name="One"))
    run(state, external("ann", "x2", 7, name="Two"))
    run(state, external("ann", "x3", 3, name="Three"))
    ids = [record_of(state, "ann", x) for x in ("x1", "x2", "x3")]
    events = run(state, merge("s", *ids))
    merged = next(e for e in events if isinstance(e, ev.ContactsMerged))
    assert merged.moved == [["ann", "x2", ids[1]]]
    assert sorted(merged.detached) == [["ann", "x1"], ["ann", "x3"]]


def test_c9_merge_rejections_change_nothing() -> None:
    state = apply([contact("c1", "ann", "a@x.test"), contact("c2", "ann", "b@x.test"),
                   deal("d1", "ann", "c1")], team())
    assert rejection(state, merge("c1", "c1")).reason == "a contact cannot be merged into itself"
    assert rejection(state, merge("c1", "nope")).field == "merged.0"
    assert "not a contact" in rejection(state, merge("c1", "d1")).reason
    run(state, merge("c1", "c2"))
    assert "already merged" in rejection(state, merge("c1", "c2")).reason
    r = rejection(state, update("c2", name="x"))
    assert r.field == "record" and "merged into" in r.reason


def test_c9_merging_across_tenants_is_rejected_as_unknown() -> None:
    state = apply([contact("c1", "ann", "a@x.test")], team())
    other = apply([user("zed"), contact("c9", "zed", "z@x.test")], TenantState("globex"))
    assert "c9" in other.records
    r = rejection(state, merge("c1", "c9"))
    assert r.field == "merged.0" and "unknown record" in r.reason


# --- C10 ------------------------------------------------------------------------------------


def test_c10_unmerge_restores_links_and_values() -> None:
    state = apply([contact("s", "bob", "s@x.test")], team())
    run(state, external("ann", "x1", 0, name="Carla", emails=["carla@cust.test"], phone="1"))
    rid = record_of(state, "ann", "x1")
    before_s = (state.records["s"].name, state.records["s"].emails,
                dict(state.records["s"].fields))
    before_r = (state.records[rid].name, state.records[rid].emails,
                dict(state.records[rid].fields))
    run(state, merge("s", rid))
    assert state.contacts.links[("ann", "x1")].record == "s"
    assert state.records["s"].fields["phone"] == "1"
    run(state, unmerge(rid))
    link = state.contacts.links[("ann", "x1")]
    assert (link.record, link.status) == (rid, "active")
    assert (state.records["s"].name, state.records["s"].emails,
            state.records["s"].fields) == before_s
    assert (state.records[rid].name, state.records[rid].emails,
            state.records[rid].fields) == before_r


def test_c10_unmerging_a_never_merged_contact_is_rejected() -> None:
    state = apply([contact("c1", "ann", "a@x.test"), contact("c2", "ann", "b@x.test"),
                   merge("c1", "c2")], team())
    assert rejection(state, unmerge("c1")).field == "record"  # the survivor
    assert "nothing to unmerge" in rejection(state, unmerge("c1")).reason
    run(state, unmerge("c2"))
    assert "nothing to unmerge" in rejection(state, unmerge("c2")).reason


def test_c6_reassignment_on_delete_user_fills_new_books_not_the_deleted_one() -> None:
    state = apply([user("top", "manager"), user("cy", manager="top"), connect("top"),
                   connect("bob"), contact("c1", "bob", "a@x.test")], team())
    events = run(state, {"cmd": "DeleteUser", "user": "bob", "reassign_to": "cy"})
    assert [(c.user, c.operation, c.record) for c in queued(events)] == [("top", "upsert", "c1")]


def test_c6_reactivated_user_gets_what_changed_meanwhile() -> None:
    state = apply([contact("c1", "ann", "a@x.test")], team())
    run(state, ack("ann", "xc-1", "a-c1"))
    run(state, {"cmd": "DeactivateUser", "user": "ann"})
    assert queued(run(state, update("c1", phone="+49 5"))) == []  # ann's book is paused
    (change,) = queued(run(state, {"cmd": "ReactivateUser", "user": "ann"}))
    assert (change.user, change.external_id, change.fields["phone"]) == ("ann", "a-c1", "+49 5")


def test_c6_smart_bcc_contact_goes_to_the_senders_book() -> None:
    state = apply([{"cmd": "ConfigureTenant", "bcc_address": "drop@acme.test"},
                   {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "ann", "provider": "gmail",
                    "address": "ann@acme.test"}], team())
    events = run(state, {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "m1", "from": "ann@acme.test", "to": ["new@cust.test"], "bcc": ["drop@acme.test"],
        "subject": "hi", "sent_at": at(0)}})
    assert [(c.user, c.fields.get("emails")) for c in queued(events)] == [
        ("ann", ["new@cust.test"])]


def test_c7_created_duplicate_is_removed_when_the_users_copy_matched_meanwhile() -> None:
    state = apply([contact("c1", "ann", "carla@cust.test")], team())  # xc-1 creates it
    run(state, external("ann", "x1", 9, name="Carla", emails=["carla@cust.test"]))
    assert record_of(state, "ann", "x1") == "c1"
    change, *matched = queued(run(state, ack("ann", "xc-1", "x-dup")))
    assert (change.operation, change.external_id) == ("remove", "x-dup")
    assert [(c.operation, c.external_id) for c in matched] == [("upsert", "x1")]  # Base Person
    assert ("ann", "x-dup") not in state.contacts.links
    assert state.contacts.active_link("ann", "c1").external_id == "x1"  # type: ignore[union-attr]


def test_c6_refused_creation_is_created_again_with_the_next_change() -> None:
    state = apply([contact("c1", "ann", "a@x.test")], team())
    run(state, {**ack("ann", "xc-1"), "ok": False, "error": "quota"})
    (change,) = queued(run(state, update("c1", phone="+49 3")))
    assert (change.operation, change.external_id, change.fields["phone"]) == (
        "upsert", None, "+49 3")
