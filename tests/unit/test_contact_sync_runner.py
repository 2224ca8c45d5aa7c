"""The contact-sync runner (issue #5, SPEC §5) with a fake engine (a log to follow, the commands
issued), the in-memory Graph fake and the in-memory runner state: inbound delta → commands,
queued change → provider call → acknowledgement, echo suppression (C4), renames (C3), deletions
(C5), 410, 429, retries."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from graph_contacts_server import FakeContactsClient, GraphBook

from adapters.errors import ProviderError, ProviderThrottled
from adapters.eventstore.store import LoggedEvent
from adapters.providers.graph.contact_payloads import ContactDeltaPage, ExternalContact
from adapters.providers.graph.contacts import ContactsClient
from adapters.tracking.contact_sync import ContactSyncStore, MemoryKeyValues
from domain.events import (
    ContactSyncConnected,
    DomainEvent,
    ExternalContactChangeAcknowledged,
    ExternalContactChangeQueued,
    UserDeactivated,
    UserReactivated,
)
from runners.services.apply import ApplyReport
from runners.services.contact_sync import ContactSyncRunner, connection_of

_changes = itertools.count(1)
_at = datetime(2026, 3, 1, tzinfo=UTC)


class FakeEngine:
    """What the runner needs of the Engine: the log to follow (`read_log`) and `apply_lines`
    for the commands it issues (kept in `sent`). No domain behind it, so the runner's own
    decisions are what the tests see, whatever the contact domain makes of the commands."""

    def __init__(self) -> None:
        self.events: list[LoggedEvent] = []
        self.sent: list[dict[str, Any]] = []

    def append(self, event: DomainEvent) -> None:
        position = len(self.events) + 1
        self.events.append(LoggedEvent(position, position, event))

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        return [e for e in self.events if e.position > after][:limit]

    def apply_lines(self, lines: Any, now: Any = None, **options: Any) -> ApplyReport:
        commands = [orjson.loads(line) for line in lines]
        self.sent.extend(commands)
        return ApplyReport(applied=len(commands))


def event(cls: type[DomainEvent], **fields: Any) -> DomainEvent:
    return cls(tenant="acme", actor="system:test", occurred_at=_at, correlation_id="test",
               **fields)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Counting:
    """Wraps a client: counts writes, can fail the next calls (the port's errors)."""

    def __init__(self, inner: ContactsClient) -> None:
        self.inner = inner
        self.writes: list[str] = []
        self.failures: list[ProviderError] = []
        self.before_update: list[Callable[[], None]] = []  # run once each, before a PATCH

    def _fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def folders(self) -> Any:
        self._fail()
        return self.inner.folders()

    def contacts_delta(self, folder: str | None, cursor: str | None) -> ContactDeltaPage:
        return self.inner.contacts_delta(folder, cursor)

    def get_contact(self, contact_id: str) -> ExternalContact | None:
        self._fail()
        return self.inner.get_contact(contact_id)

    def create_contact(self, fields: Mapping[str, Any], categories: list[str],
                       folder: str | None = None) -> ExternalContact:
        self._fail()
        self.writes.append("create")
        return self.inner.create_contact(fields, categories, folder)

    def update_contact(self, contact_id: str, fields: Mapping[str, Any],
                       categories: list[str]) -> ExternalContact | None:
        self._fail()
        self.writes.append(f"update {contact_id}")
        while self.before_update:
            self.before_update.pop(0)()
        return self.inner.update_contact(contact_id, fields, categories)

    def delete_contact(self, contact_id: str) -> None:
        self._fail()
        self.writes.append(f"delete {contact_id}")
        self.inner.delete_contact(contact_id)

    def categories(self) -> Any:
        self._fail()
        return self.inner.categories()

    def create_category(self, name: str, color: str | None = None) -> Any:
        self.writes.append(f"category {name}")
        return self.inner.create_category(name, color)

    def close(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.engine = FakeEngine()
        self.engine.append(event(ContactSyncConnected, user="mia", categories=["Clients"]))
        self.book = GraphBook()
        self.client = Counting(FakeContactsClient(self.book))
        self.store = ContactSyncStore(MemoryKeyValues())
        self.clock = Clock()
        self.credentials = {"mia"}
        self.runner = self.new_runner()

    def new_runner(self) -> ContactSyncRunner:
        return ContactSyncRunner(
            self.engine, self.store,
            lambda tenant, user: self.client if user in self.credentials else None,
            sleep=self.clock.sleep, clock=self.clock, retry_wait=0.5)

    def issued(self, cmd: str) -> list[dict[str, Any]]:
        """The commands `cmd` the runner issued, without their envelope (tenant, actor, id)."""
        envelope = {"cmd", "tenant", "actor", "command_id"}
        return [{k: v for k, v in c.items() if k not in envelope}
                for c in self.engine.sent if c["cmd"] == cmd]

    def acks(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(**{"external_id": None, "error": None, **ack})
                for ack in self.issued("AcknowledgeExternalContactChange")]

    def queue(self, **fields: Any) -> str:
        """What the contact domain emits for the runner."""
        change_id = f"t-{next(_changes)}"
        self.engine.append(event(ExternalContactChangeQueued, change_id=change_id, **fields))
        return change_id


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


def contact(name: str, *categories: str, email: str | None = None) -> dict[str, Any]:
    return {"displayName": name, "categories": list(categories),
            "emailAddresses": [{"name": name, "address": email or f"{name.lower()}@x.test"}]}


def test_c1_inbound_delta_round_becomes_sync_external_contact_for_selected_categories(
        world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    base = world.book.put(contact("Bob", "Base Person"))
    world.book.put(contact("Cat", "Private stuff"))  # not a selected category: stays outside
    folder = world.book.add_folder("Suppliers")
    dan = world.book.put(contact("Dan", "Clients"), folder=folder)
    world.runner.run_once()
    synced = {p["external_id"]: p for p in world.issued("SyncExternalContact")}
    assert set(synced) == {ann["id"], base["id"], dan["id"]}
    assert synced[ann["id"]] == {
        "user": "mia", "external_id": ann["id"], "folder": "private",
        "fields": {"name": "Ann", "emails": ["ann@x.test"]}, "categories": ["Clients"],
        "modified_at": "2026-01-01T00:01:00+00:00"}
    assert world.store.cursor("acme", "mia", None) is not None
    assert world.store.cursor("acme", "mia", folder) is not None
    world.runner.run_once()  # nothing changed: nothing sent again
    assert len(world.issued("SyncExternalContact")) == 3


def test_c4_external_edit_comes_in_once(world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    world.runner.run_once()
    world.book.put({"mobilePhone": "+1 555"}, contact_id=ann["id"])
    world.runner.run_once()
    world.runner.run_once()
    synced = world.issued("SyncExternalContact")
    assert [p["fields"].get("mobile_phone") for p in synced] == [None, "+1 555"]


def test_outbound_upsert_creates_then_patches_and_acknowledges_with_the_external_id(
        world: World) -> None:
    first = world.queue(user="mia", operation="upsert", record="c-1",
                        fields={"name": "Grace", "emails": ["grace@x.test"]},
                        categories=["Base Person", "Base Current Customer"])
    world.runner.run_once()
    [ack] = world.acks()
    assert ack.change_id == first and ack.ok and ack.external_id in world.book.contacts
    stored = world.book.contacts[ack.external_id]
    assert stored["displayName"] == "Grace"
    assert stored["categories"] == ["Base Person", "Base Current Customer"]
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ack.external_id,
                fields={"name": "Grace Hopper"}, categories=["Base Person"])
    world.runner.run_once()
    assert world.client.writes == ["create", f"update {ack.external_id}"]
    assert world.book.contacts[ack.external_id]["displayName"] == "Grace Hopper"
    assert world.book.contacts[ack.external_id]["categories"] == ["Base Person"]
    assert [a.ok for a in world.acks()] == [True, True]


def test_c4_the_runners_own_write_is_not_synced_back(world: World) -> None:
    world.queue(user="mia", operation="upsert", record="c-1", fields={"name": "Grace"},
                categories=["Base Person"])
    world.runner.run_once()
    world.runner.run_once()
    assert world.issued("SyncExternalContact") == []  # created by us: no echo
    [ack] = world.acks()
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ack.external_id,
                fields={"name": "Grace H"}, categories=["Base Person"])
    world.runner.run_once()
    assert world.issued("SyncExternalContact") == []  # patched by us: no echo either
    world.book.put({"displayName": "Grace (Outlook)"}, contact_id=ack.external_id)
    world.runner.run_once()
    [synced] = world.issued("SyncExternalContact")  # a real external edit does come in
    assert synced["fields"]["name"] == "Grace (Outlook)"


def test_c5_external_deletion_is_reported_once_and_only_for_synced_contacts(
        world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    cat = world.book.put(contact("Cat", "Private stuff"))
    world.runner.run_once()
    world.book.remove(ann["id"])
    world.book.remove(cat["id"])
    world.runner.run_once()
    world.runner.run_once()
    assert world.issued("DeleteExternalContact") == [{"user": "mia",
                                                        "external_id": ann["id"]}]


def test_remove_deletes_what_the_crm_created_and_only_untags_the_users_own_contact(
        world: World) -> None:
    world.queue(user="mia", operation="upsert", record="c-1", fields={"name": "Grace"},
                categories=["Base Person"])
    own = world.book.put(contact("Ann", "Clients", "Base Person"))
    world.runner.run_once()
    created = world.acks()[0].external_id
    assert created is not None
    world.queue(user="mia", operation="remove", record="c-1", external_id=created)
    world.queue(user="mia", operation="remove", record="c-2", external_id=own["id"])
    world.runner.run_once()
    assert created not in world.book.contacts
    assert world.book.contacts[own["id"]]["categories"] == ["Clients"]
    assert [a.ok for a in world.acks()] == [True, True, True]
    world.runner.run_once()
    assert world.issued("DeleteExternalContact") == []  # our own deletion is no echo


def test_c3_rename_of_a_base_category_is_reported_and_the_revert_recreates_it(
        world: World) -> None:
    person = world.book.add_category("Base Person", "preset3")
    world.book.add_category("Holidays")
    world.runner.run_once()
    world.book.rename_category(person["id"], "People")
    world.book.rename_category(next(c for c in world.book.categories if c != person["id"]),
                               "Vacation")  # not a Base or selected category: not ours
    world.runner.run_once()
    assert world.issued("RenameExternalCategory") == [
        {"user": "mia", "old": "Base Person", "new": "People"}]
    change = world.queue(user="mia", operation="revert_category_rename",
                         category_old="People", category_new="Base Person")
    world.runner.run_once()
    names = {c["displayName"]: c["color"] for c in world.book.categories.values()}
    assert names == {"People": "preset3", "Base Person": "preset3", "Vacation": "preset0"}
    assert [(a.change_id, a.ok) for a in world.acks()] == [(change, True)]
    world.runner.run_once()
    assert len(world.issued("RenameExternalCategory")) == 1  # the revert is not a rename


def test_410_expired_cursor_starts_a_full_round_without_resending_unchanged(
        world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    world.book.put(contact("Bob", "Clients"))
    world.runner.run_once()
    world.book.put({"companyName": "Acme"}, contact_id=ann["id"])
    world.book.expire_tokens()
    world.runner.run_once()
    synced = world.issued("SyncExternalContact")
    assert len(synced) == 3
    assert len(world.issued("SyncExternalContact")) == 3  # Bob, unchanged, is not sent again
    assert synced[-1]["external_id"] == ann["id"]
    assert synced[-1]["fields"]["company"] == "Acme"


def test_429_pauses_the_user_for_retry_after(world: World) -> None:
    world.book.put(contact("Ann", "Clients"))
    world.client.failures.append(ProviderThrottled("graph", "429", 30.0, 429))
    world.runner.run_once()
    assert world.issued("SyncExternalContact") == []
    world.clock.now += 10
    world.runner.pull_all()  # still paused: not even asked
    assert world.issued("SyncExternalContact") == []
    world.clock.now += 25
    world.runner.pull_all()
    assert len(world.issued("SyncExternalContact")) == 1


def test_refused_change_after_bounded_retries_is_acknowledged_with_the_reason(
        world: World) -> None:
    world.client.failures.extend([ProviderError("graph", "POST /me/contacts: ReadTimeout")] * 3)
    world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.runner.follow_log()
    [ack] = world.acks()
    assert not ack.ok and ack.error is not None and "ReadTimeout" in ack.error
    assert world.clock.slept == [0.5, 1.0]  # three attempts, backing off
    assert world.book.contacts == {}


def test_transient_failure_then_success(world: World) -> None:
    world.client.failures.append(ProviderThrottled("graph", "429", 2.0, 429))
    world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.runner.follow_log()
    [ack] = world.acks()
    assert ack.ok and world.clock.slept == [2.0]  # waited what Retry-After asked


def test_a_provider_refusal_is_not_retried(world: World) -> None:
    world.client.failures.append(ProviderError("graph", "400 ErrorInvalidProperty", 400))
    world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.runner.follow_log()
    [ack] = world.acks()
    assert not ack.ok and "ErrorInvalidProperty" in (ack.error or "")
    assert world.clock.slept == []


def test_without_graph_credentials_the_change_is_refused_and_the_user_not_pulled(
        world: World) -> None:
    world.credentials.clear()
    world.book.put(contact("Ann", "Clients"))
    world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.runner.run_once()
    [ack] = world.acks()
    assert not ack.ok and "credentials" in (ack.error or "")
    assert world.issued("SyncExternalContact") == []


def test_restart_neither_repeats_a_provider_call_nor_an_acknowledgement(world: World) -> None:
    world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.runner.run_once()
    assert world.client.writes == ["create"]
    again = world.new_runner()  # same durable state: resumes after the executed change
    again.run_once()
    assert world.client.writes == ["create"]
    assert len(world.acks()) == 1
    assert again.connections.keys() == world.runner.connections.keys()


def test_crash_between_provider_call_and_acknowledgement_acknowledges_without_calling_again(
        world: World) -> None:
    change = world.queue(user="mia", operation="upsert", fields={"name": "X"}, categories=[])
    world.store.set_done("acme", change, {"ok": True, "external_id": "AAMk-earlier"})
    world.runner.follow_log()
    assert world.client.writes == []
    [ack] = world.acks()
    assert ack.external_id == "AAMk-earlier"


def test_l1_a_deactivated_user_is_not_pulled_until_reactivated(world: World) -> None:
    world.book.put(contact("Ann", "Clients"))
    world.engine.append(event(UserDeactivated, user="mia"))
    world.runner.run_once()
    assert world.issued("SyncExternalContact") == []
    world.engine.append(event(UserReactivated, user="mia"))
    world.runner.run_once()
    assert len(world.issued("SyncExternalContact")) == 1


def test_connection_is_read_from_the_contact_domains_event() -> None:
    event = ContactSyncConnected(tenant="acme", actor="max", occurred_at=datetime.now(UTC),
                                 correlation_id="c", user="mia", categories=["Clients"])
    assert connection_of(event) == ("mia", ["Clients"])
    other = ExternalContactChangeAcknowledged(tenant="acme", actor="max", correlation_id="c",
                                              occurred_at=datetime.now(UTC), change_id="x",
                                              user="mia")
    assert connection_of(other) is None


def test_c2_upsert_replaces_the_base_categories_and_keeps_the_users_own(world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients", "Base Lead", "VIP"))
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ann["id"],
                fields={"name": "Ann"}, categories=["Base Person", "Base Current Customer"])
    world.runner.follow_log()
    assert world.book.contacts[ann["id"]]["categories"] == [
        "Clients", "VIP", "Base Person", "Base Current Customer"]


def test_upsert_of_an_externally_deleted_contact_is_refused_not_recreated(world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    world.book.remove(ann["id"])
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ann["id"],
                fields={"name": "Ann"}, categories=["Base Person"])
    world.runner.follow_log()
    [ack] = world.acks()
    assert not ack.ok and "C5" in (ack.error or "")
    assert world.book.contacts == {}


def test_c4_an_external_edit_not_yet_pulled_survives_the_runners_write(world: World) -> None:
    ann = world.book.put(contact("Ann", "Clients"))
    world.runner.run_once()
    world.book.put({"companyName": "Acme"}, contact_id=ann["id"])  # not pulled yet
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ann["id"],
                fields={"name": "Ann"}, categories=["Base Person"])
    world.runner.follow_log()
    world.runner.pull_all()
    synced = world.issued("SyncExternalContact")
    assert len(synced) == 2  # the write did not swallow the external edit
    assert synced[1]["fields"]["company"] == "Acme"
    assert synced[1]["categories"] == ["Clients", "Base Person"]


def test_c4_an_external_edit_made_between_the_runners_read_and_write_survives(
        world: World) -> None:
    """The runner reads the contact (nothing unseen), the user edits it, then the runner's
    PATCH answers a contact holding both: that version is not the runner's own, and the next
    pull brings the edit in (it was swallowed as an echo: found when an end-to-end test of the
    contacts runner timed out under load)."""
    ann = world.book.put(contact("Ann", "Clients"))
    world.runner.run_once()
    world.client.before_update.append(
        lambda: world.book.put({"companyName": "Acme"}, contact_id=ann["id"]))
    world.queue(user="mia", operation="upsert", record="c-1", external_id=ann["id"],
                fields={"name": "Ann"}, categories=["Base Person"])
    world.runner.follow_log()
    assert not world.client.before_update  # the edit came between the read and the write
    world.runner.pull_all()
    synced = world.issued("SyncExternalContact")
    assert len(synced) == 2  # the write did not swallow the external edit
    assert synced[1]["fields"]["company"] == "Acme"
