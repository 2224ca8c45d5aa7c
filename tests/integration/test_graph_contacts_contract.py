"""The `ContactsClient` contract: the in-memory fake and the real Graph client over HTTP (against
the local Graph contacts server) pass the same tests; then what only HTTP has (429, tokens)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from graph_contacts_server import FakeContactsClient, GraphBook, graph_contacts_app
from loopback import Server

from adapters.errors import CursorExpired, ProviderError, ProviderThrottled
from adapters.providers.graph.contact_payloads import ContactDeltaPage
from adapters.providers.graph.contacts import ContactsClient, GraphContactsClient

pytestmark = pytest.mark.integration

TOKEN = "graph-test-token"


@pytest.fixture(params=["fake", "http"])
def book_client(request: pytest.FixtureRequest) -> Iterator[tuple[GraphBook, ContactsClient]]:
    book = GraphBook()
    if request.param == "fake":
        yield book, FakeContactsClient(book)
        return
    with Server(graph_contacts_app(book, TOKEN)) as server:
        client = GraphContactsClient(lambda: TOKEN, server.url + "/v1.0", backoff=0.01)
        yield book, client
        client.close()


def ada(**extra: Any) -> dict[str, Any]:
    return {"displayName": "Ada Lovelace", "givenName": "Ada", "surname": "Lovelace",
            "emailAddresses": [{"name": "Ada", "address": "ada@example.com"}],
            "businessPhones": ["+44 20 1234"], "mobilePhone": "+44 7700 1",
            "companyName": "Engines Ltd", "categories": ["Clients"], **extra}


def full_round(client: ContactsClient, folder: str | None, cursor: str | None = None
               ) -> tuple[list[ContactDeltaPage], str]:
    pages = []
    while True:
        page = client.contacts_delta(folder, cursor)
        pages.append(page)
        if page.delta_link is not None:
            return pages, page.delta_link
        assert page.next_link is not None
        cursor = page.next_link


def test_folders_are_the_default_one_and_every_contact_folder_all_private(book_client) -> None:
    book, client = book_client
    ids = [book.add_folder(f"Folder {n}") for n in range(4)]  # more than one page
    folders = client.folders()
    assert [f.id for f in folders] == [None, *sorted(ids)]
    assert {f.kind for f in folders} == {"private"}
    assert folders[1].name.startswith("Folder ")


def test_first_delta_round_pages_through_every_contact_of_the_folder(book_client) -> None:
    book, client = book_client
    made = [book.put(ada(displayName=f"Ada {n}")) for n in range(7)]
    other = book.add_folder("Suppliers")
    book.put(ada(displayName="Elsewhere"), folder=other)
    pages, _ = full_round(client, None)
    assert len(pages) == 3  # 7 contacts, 3 a page
    seen = [c for p in pages for c in p.contacts]
    assert sorted(c.id for c in seen) == sorted(m["id"] for m in made)
    first = next(c for c in seen if c.id == made[0]["id"])
    assert first.fields == {"name": "Ada 0", "given_name": "Ada", "surname": "Lovelace",
                            "emails": ["ada@example.com"], "business_phones": ["+44 20 1234"],
                            "mobile_phone": "+44 7700 1", "company": "Engines Ltd"}
    assert first.categories == ["Clients"]
    assert first.modified_at.tzinfo is not None


def test_next_round_reports_only_changes_and_removals(book_client) -> None:
    book, client = book_client
    kept = book.put(ada())
    gone = book.put(ada(displayName="Gone"))
    _, cursor = full_round(client, None)
    book.put({"mobilePhone": "+1 555"}, contact_id=kept["id"])
    book.remove(gone["id"])
    new = book.put(ada(displayName="New"))
    pages, cursor = full_round(client, None, cursor)
    changed = {c.id: c for p in pages for c in p.contacts}
    assert set(changed) == {kept["id"], new["id"]}
    assert changed[kept["id"]].fields["mobile_phone"] == "+1 555"
    assert [i for p in pages for i in p.removed_ids] == [gone["id"]]
    pages, _ = full_round(client, None, cursor)
    assert pages[0].contacts == [] and pages[0].removed_ids == []


def test_folder_delta_sees_only_that_folder(book_client) -> None:
    book, client = book_client
    folder = book.add_folder("Suppliers")
    inside = book.put(ada(), folder=folder)
    book.put(ada(displayName="Default"))
    pages, _ = full_round(client, folder)
    assert [c.id for p in pages for c in p.contacts] == [inside["id"]]
    assert pages[0].contacts[0].folder_id == folder


def test_expired_delta_cursor_is_cursor_expired(book_client) -> None:
    book, client = book_client
    book.put(ada())
    _, cursor = full_round(client, None)
    book.expire_tokens()
    with pytest.raises(CursorExpired):
        client.contacts_delta(None, cursor)
    pages, _ = full_round(client, None)  # a new round works
    assert len([c for p in pages for c in p.contacts]) == 1


def test_create_update_delete_contact_round_trip_fields_and_categories(book_client) -> None:
    book, client = book_client
    fields = {"name": "Grace Hopper", "emails": ["grace@navy.test"], "phone": "+1 202",
              "company": "Navy", "customer_status": "current"}
    created = client.create_contact(fields, ["Base Person", "Base Current Customer"])
    assert created.id in book.contacts
    assert created.fields == {"name": "Grace Hopper", "emails": ["grace@navy.test"],
                              "business_phones": ["+1 202"], "company": "Navy"}
    assert created.categories == ["Base Person", "Base Current Customer"]
    assert client.get_contact(created.id) == created
    updated = client.update_contact(created.id, {"name": "Grace B. Hopper"}, ["Base Person"])
    assert updated is not None and updated.id == created.id
    assert updated.fields["name"] == "Grace B. Hopper"
    assert updated.fields["emails"] == ["grace@navy.test"]  # untouched keys are kept
    assert updated.categories == ["Base Person"]
    assert updated.modified_at > created.modified_at
    client.delete_contact(created.id)
    assert created.id not in book.contacts
    client.delete_contact(created.id)  # idempotent
    assert client.update_contact(created.id, {"name": "x"}, []) is None
    assert client.get_contact(created.id) is None


def test_create_contact_in_a_folder(book_client) -> None:
    book, client = book_client
    folder = book.add_folder("CRM")
    created = client.create_contact({"name": "In folder"}, [], folder)
    assert book.contacts[created.id]["parentFolderId"] == folder


def test_master_categories_list_and_create(book_client) -> None:
    book, client = book_client
    made = book.add_category("Base Person", "preset2")
    book.rename_category(made["id"], "People")
    assert [(c.id, c.name, c.color) for c in client.categories()] == [
        (made["id"], "People", "preset2")]
    created = client.create_category("Base Person", "preset2")
    assert created.name == "Base Person" and created.id != made["id"]
    assert {c.name for c in client.categories()} == {"People", "Base Person"}
    with pytest.raises(ProviderError):
        client.create_category("Base Person")


# --- HTTP only -----


@pytest.fixture
def http() -> Iterator[tuple[GraphBook, str]]:
    book = GraphBook()
    with Server(graph_contacts_app(book, TOKEN)) as server:
        yield book, server.url + "/v1.0"


def test_429_waits_retry_after_then_succeeds(http: tuple[GraphBook, str]) -> None:
    book, url = http
    book.put(ada())
    book.throttled, book.retry_after = 2, "0.3"
    client = GraphContactsClient(lambda: TOKEN, url, backoff=5.0)
    started = time.monotonic()
    page = client.contacts_delta(None, None)
    assert time.monotonic() - started >= 0.6  # waited Retry-After twice, not the 5 s backoff
    assert len(page.contacts) == 1
    assert len(book.requests) == 3
    client.close()


def test_429_beyond_the_retries_is_provider_throttled_with_retry_after(
        http: tuple[GraphBook, str]) -> None:
    book, url = http
    book.throttled, book.retry_after = 10, "120"
    client = GraphContactsClient(lambda: TOKEN, url, max_retry_wait=60)
    with pytest.raises(ProviderThrottled) as caught:
        client.create_contact({"name": "x"}, [])
    assert caught.value.retry_after == 120
    assert len(book.requests) == 1  # a wait beyond max_retry_wait is not slept through
    client.close()


def test_token_never_in_errors_and_links_outside_the_base_are_refused(
        http: tuple[GraphBook, str]) -> None:
    book, url = http
    secret = "wrong-but-secret-token"
    client = GraphContactsClient(lambda: secret, url)
    with pytest.raises(ProviderError) as caught:
        client.folders()
    assert caught.value.status == 401 and secret not in str(caught.value)
    with pytest.raises(ValueError):
        client.contacts_delta(None, "https://evil.example/v1.0/me/contacts/delta?x=1")
    assert all(path.startswith("/v1.0/") for _, path, _ in book.requests)
    client.close()


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(ValueError):
        GraphContactsClient(lambda: TOKEN, "http://graph.example.com/v1.0")
