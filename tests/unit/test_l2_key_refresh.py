"""L2 across processes with fewer round trips (issue #15): the destroyed-key count is asked before
the first key use after each page read and each append, not at every read. So an append always
asks before it seals — a key another process destroyed is never used to seal again, even by an
append with no read before it — and reads or appends that open and seal nothing ask nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.errors import StoreError
from adapters.eventstore.content_keys import MemoryContentKeys
from adapters.eventstore.store import EventStore
from domain import events as ev

T = datetime(2026, 1, 1, tzinfo=UTC)


def event(kind: type[ev.DomainEvent], **fields: object) -> ev.DomainEvent:
    return kind(tenant="acme", actor="system:test", occurred_at=T, correlation_id="c", **fields)


def synced(mid: str) -> ev.DomainEvent:
    message = ev.MailMessage.model_validate({
        "id": mid, "from": "carl@x.test", "to": ["leo@acme.test"], "subject": f"secret {mid}",
        "body": "body", "sent_at": T.isoformat()})
    return event(ev.MessageSynced, mailbox="mb", thread="mb:t", message=message)


def cursor(value: str) -> ev.DomainEvent:
    return event(ev.MailboxCursorAdvanced, mailbox="mb", cursor=value)


SETUP = [event(ev.UserAdded, user="leo", email="leo@acme.test", role="member"),
         event(ev.MailboxConnected, mailbox="mb", user="leo", provider="gmail",
               address="leo@acme.test", scope={}, backfill_days=30, credentials_set=False)]


class CountingKeys(MemoryContentKeys):
    """In-memory keys that count how often the destroyed keys' fingerprint is asked (a
    statement each on PostgreSQL and SQLite)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def _destroyed_fingerprint(self) -> object:
        self.asked += 1
        return super()._destroyed_fingerprint()


def test_l2_a_key_destroyed_by_another_process_is_never_used_to_seal_the_next_append(
        tmp_path: Path) -> None:
    db = str(tmp_path / "crm.db")
    writer, deleter = EventStore.sqlite(db), EventStore.sqlite(db)  # two processes' stores
    try:
        writer.append_raw("acme", 0, [*SETUP, synced("m1")])  # leo's key: cached by the writer
        assert writer.keys.key("acme", "leo", create=False) is not None
        deleter.erase_user("acme", "leo", T)  # DeleteUser in the other process
        # no read in between: the append itself asks before it seals
        with pytest.raises(StoreError, match="destroyed"):
            writer.append_raw("acme", 3, [synced("m2")])
        assert [seq for seq, _ in writer.tenant_events("acme")] == [1, 2, 3]
        # and what was sealed before reads as erased in the writer too
        read = [e for _, e in writer.tenant_events("acme")][2]
        assert isinstance(read, ev.MessageSynced) and read.message.subject == ev.ERASED
    finally:
        writer.close()
        deleter.close()


def test_l2_keys_are_asked_once_per_append_that_seals_and_never_for_what_opens_nothing(
        ) -> None:
    store = EventStore.in_memory()
    keys = CountingKeys()
    store.keys = store.mapper.keys = keys
    store.append_raw("acme", 0, [*SETUP, synced("m1"), synced("m2")])
    assert keys.asked == 1  # one append: asked once, before its first seal
    state = store.state("acme")  # the command side opens nothing: its state keeps no content
    assert keys.asked == 1
    assert len(list(store.tenant_events("acme"))) == 4  # sealed content: asked before opening
    assert keys.asked == 2
    store.append(state, [cursor("5")])  # seals nothing
    assert len(list(store.tenant_events("acme", after=4))) == 1  # one cursor event: opens none
    store.state("acme")
    assert keys.asked == 2
    store.append(state, [synced("m3")])
    assert keys.asked == 3
