"""Graph contact payloads: the contact ↔ `fields` mapping, delta pages, and where unreadable input
is reported (issue #5)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.errors import MalformedWebhook
from adapters.providers.graph.contact_payloads import (
    contact_body,
    content_fingerprint,
    graph_contact_fields,
    parse_category,
    parse_contact,
    parse_contact_delta,
)

LINK = "https://graph.microsoft.com/v1.0/me/contacts/delta?$deltatoken=abc"


def item(contact_id: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"id": contact_id, "displayName": "Ann", "lastModifiedDateTime": "2026-02-01T10:00:00Z",
            "categories": ["Clients"], **extra}


def test_name_falls_back_to_given_name_and_surname_and_empty_values_are_left_out() -> None:
    fields = graph_contact_fields({"givenName": "Ann", "surname": "Lee", "displayName": "",
                                   "emailAddresses": [{"name": "x", "address": ""},
                                                      {"address": "ann@x.test"}],
                                   "businessPhones": [], "mobilePhone": None})
    assert fields == {"name": "Ann Lee", "given_name": "Ann", "surname": "Lee",
                      "emails": ["ann@x.test"]}


def test_graph_seven_digit_fractions_and_change_key_are_read() -> None:
    contact = parse_contact(item(lastModifiedDateTime="2026-02-01T10:00:00.1234567Z",
                                 changeKey="EQAAABYAAAA", parentFolderId="F1"))
    assert contact.modified_at.microsecond == 123456
    assert (contact.change_key, contact.folder_id) == ("EQAAABYAAAA", "F1")


def test_contact_body_writes_only_the_keys_named_and_the_phone_as_business_phone() -> None:
    body = contact_body({"name": "Ann", "phone": "+1 2", "customer_status": "current",
                         "name (previous)": "Anne"}, ["Base Person"])
    assert body == {"categories": ["Base Person"], "displayName": "Ann",
                    "businessPhones": ["+1 2"]}
    assert contact_body({}, []) == {"categories": []}
    assert contact_body({"business_phones": ["1", "2"], "phone": "3",
                         "emails": ["a@x.test"]}, [])["businessPhones"] == ["1", "2"]


def test_fingerprint_ignores_category_order_but_not_values() -> None:
    one = content_fingerprint({"name": "Ann"}, ["A", "B"])
    assert one == content_fingerprint({"name": "Ann"}, ["B", "A"])
    assert one != content_fingerprint({"name": "Anne"}, ["A", "B"])
    assert one != content_fingerprint({"name": "Ann"}, ["A"])


def test_delta_page_later_entry_wins_and_removals_are_listed() -> None:
    page = parse_contact_delta({"value": [
        item("c1"), {"id": "c2", "@removed": {"reason": "deleted"}},
        {"id": "c1", "@removed": {"reason": "deleted"}}, item("c2", displayName="Back")],
        "@odata.deltaLink": LINK})
    assert page.removed_ids == ["c1"]
    assert [(c.id, c.fields["name"]) for c in page.contacts] == [("c2", "Back")]
    assert page.delta_link == LINK and page.next_link is None


@pytest.mark.parametrize(("page", "field"), [
    ({"value": []}, "@odata.deltaLink"),
    ({"value": [], "@odata.deltaLink": LINK, "@odata.nextLink": LINK}, "@odata.deltaLink"),
    ({"@odata.deltaLink": LINK}, "value"),
    ({"value": [{"displayName": "no id"}], "@odata.deltaLink": LINK}, "value[0].id"),
    ({"value": [item(), item("c2", lastModifiedDateTime="yesterday")],
      "@odata.deltaLink": LINK}, "value[1].lastModifiedDateTime"),
    ({"value": [item(categories=[7])], "@odata.deltaLink": LINK}, "value[0].categories[0]"),
    ({"value": [item(emailAddresses=["a@x.test"])], "@odata.deltaLink": LINK},
     "value[0].emailAddresses[0]"),
])
def test_unreadable_delta_pages_name_the_field(page: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedWebhook) as caught:
        parse_contact_delta(page)
    assert caught.value.field == field


def test_category_needs_id_and_display_name() -> None:
    assert parse_category({"id": "k", "displayName": "Base Lead"}).color is None
    with pytest.raises(MalformedWebhook) as caught:
        parse_category({"id": "k"})
    assert caught.value.field == "displayName"
