"""The event store's fast path for MessageSynced (issue #15, adapters.eventstore.synced_decode):
what it decodes folds exactly as the event the model decodes from the same bytes, and whatever
is not in the form the mapper writes is left to the model (which accepts or rejects it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.eventstore.chain import CHAIN_END
from adapters.eventstore.store import EventStore, stream_id
from adapters.eventstore.synced_decode import decode_plain, decode_synced
from domain import events as ev
from domain.mail_folds import SyncedMessage, synced_message
from domain.state import TenantState, evolve

T0 = datetime(2026, 1, 1, tzinfo=UTC)
texts = st.text(max_size=6)
opt = st.none() | texts
times = st.builds(lambda s, us, off: (T0 + timedelta(seconds=s, microseconds=us)).astimezone(
    timezone(timedelta(minutes=off))), st.integers(0, 10**8), st.sampled_from([0, 1, 999_999]),
    st.sampled_from([0, 330, -300]))


def head(kind: type[ev.DomainEvent], at: datetime = T0, **fields: Any) -> ev.DomainEvent:
    return kind(tenant="t", actor="system:test", occurred_at=at, correlation_id="c", **fields)


def opened_store() -> EventStore:
    store = EventStore.in_memory()
    store.append_raw("t", 0, [
        head(ev.UserAdded, user="u", email="u@x.test", role="member"),
        head(ev.MailboxConnected, mailbox="mb", user="u", provider="gmail", address="u@x.test",
             scope={}, backfill_days=30, credentials_set=False)])
    return store


messages = st.builds(
    lambda mid, rfc, reply, refs, sender, to, cc, subject, body, sent, labels, status, read: {
        "id": mid, "message_id": rfc, "in_reply_to": reply, "references": refs, "from": sender,
        "to": to, "cc": cc, "subject": subject, "body": body, "sent_at": sent,
        "labels": labels, "delivery_status": status, "read": read},
    texts, opt, opt, st.none() | st.lists(texts, max_size=2), texts, st.lists(texts, max_size=2),
    st.lists(texts, max_size=2), texts, texts, times, st.lists(texts, max_size=2), opt,
    st.booleans())


def synced_events(batch: list[tuple[dict[str, Any], str, bool, str | None, datetime]]
                  ) -> list[ev.DomainEvent]:
    return [head(ev.MessageSynced, at=at, mailbox="mb", thread=f"mb:{thread}",
                 message=ev.MailMessage.model_validate(m), crm_initiated=crm, command_id=cid)
            for m, thread, crm, cid, at in batch]


def fold_of(store: EventStore, item: StoredEvent, content: bool = True) -> object:
    """What a fold reads of `item` (the command side's: without content)."""
    return store.mapper.to_fold(stream_id("t"), item.originator_version, item.topic, item.state,
                                content)


def stored(store: EventStore) -> list[StoredEvent]:
    return list(store.app.recorder.select_events(stream_id("t")))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(messages, st.sampled_from(["a", "b"]), st.booleans(), opt, times),
                min_size=1, max_size=6), st.booleans())
def test_a_synced_message_decoded_straight_folds_as_the_model_decodes_it(
        batch: list[tuple[dict[str, Any], str, bool, str | None, datetime]],
        erased: bool) -> None:
    store = opened_store()
    store.append_raw("t", 2, synced_events(batch))
    if erased:  # L2: the content reads as the placeholders, both ways
        store.erase_user("t", "u", T0)
    for item in stored(store)[2:]:
        fast = fold_of(store, item)
        assert isinstance(fast, SyncedMessage)  # the mapper's own form: always decoded straight
        event = store.mapper.to_domain_event(item).event
        assert fast == synced_message(event, event.crm_initiated)
        # the command side's: the same without participants, subject and time
        assert fold_of(store, item, False) == synced_message(event, event.crm_initiated, False)
        for content in (True, False):
            plain = decode_plain(item.state, store.keys, content)  # no escapes: the regex's
            assert plain is None or plain == decode_synced(item.state, CHAIN_END + 2, store.keys,
                                                           content)
    plain = TenantState("t", message_content=False)
    for seq, event in store.tenant_events("t"):
        evolve(plain, event, seq)
    assert store.state("t") == plain


def test_attachments_and_refused_ones_are_decoded_by_the_model() -> None:
    store = opened_store()
    message = ev.MailMessage.model_validate({
        "id": "m1", "from": "a@x.test", "to": ["b@x.test"], "subject": "s", "sent_at": T0,
        "attachments": [{"name": "a.pdf", "size": 1, "content_type": "application/pdf"}]})
    store.append_raw("t", 2, [head(ev.MessageSynced, mailbox="mb", thread="mb:a",
                                   message=message)])
    found = fold_of(store, stored(store)[2])
    assert isinstance(found, ev.MessageSynced) and found.message == message


def canonical(store: EventStore) -> StoredEvent:
    message = ev.MailMessage.model_validate({
        "id": "m1", "message_id": "<r@x>", "from": "A@x.test", "to": ["b@x.test"],
        "subject": "hello", "body": "hi", "sent_at": T0, "labels": ["INBOX"]})
    store.append_raw("t", 2, [head(ev.MessageSynced, mailbox="mb", thread="mb:a",
                                   message=message)])
    return stored(store)[2]


def altered(item: StoredEvent, old: bytes, new: bytes) -> StoredEvent:
    assert old in item.state
    return StoredEvent(item.originator_id, item.originator_version, item.topic,
                       item.state.replace(old, new, 1))


HOSTILE = [
    (b'"read":false', b'"read":"false"'),  # the model coerces; canonical bytes never hold it
    (b'"read":false', b'"read":0'),
    (b'"to":["b@x.test"]', b'"to":"b@x.test"'),
    (b'"to":["b@x.test"]', b'"to":["b@x.test",1]'),
    (b'"labels":["INBOX"]', b'"labels":null'),
    (b'"cc":[]', b'"cc":[],"extra":1'),
    (b'"cc":[],', b''),  # a field left out (the model has a default)
    (b'"cc":[]', b'"cc":[],"cc":[]'),  # a duplicate key
    (b'"cc":[]', b'"cc": []'),  # another spelling of the same JSON
    (b'"mailbox":"mb"', b'"mailbox":"m\\u0062"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T00:00:00Z"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T00:00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-02-30T00:00:00+00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T00:00:00.5+00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T24:00:00+00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":1767225600'),
    # odd but valid: taken straight, and read as the model reads them
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T00:00:00.000000+00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2026-01-01T00:00:00.000001-00:00"'),
    (b'"sent_at":"2026-01-01T00:00:00+00:00"', b'"sent_at":"2025-12-31T19:00:00-05:00"'),
    (b'"occurred_at":"2026-01-01T00:00:00+00:00"', b'"occurred_at":"2026-01-01T05:30:00+05:30"'),
    (b'"occurred_at":"2026-01-01T00:00:00+00:00"', b'"occurred_at":"2026-W01-4T00:00:00+00:00"'),
    (b'"crm_initiated":false', b'"crm_initiated":1'),
    (b'"refused":[]', b'"refused":[{}]'),
    (b'"attachments":[]', b'"attachments":[1]'),
    (b'"command_id":null', b'"command_id":7'),
    (b'"subject":"\\u0000erased"', b'"subject":"other"'),  # not the sealed placeholder
    (b'"body":""', b'"body":"x"'),
    (b'"id":"m1"', b'"id":"\\ud800"'),  # a lone surrogate
    (b'"_sealed":"', b'"_sealed": "'),
]


@pytest.mark.parametrize(("old", "new"), HOSTILE)
def test_a_payload_not_in_the_mappers_form_is_left_to_the_model(old: bytes, new: bytes) -> None:
    store = opened_store()
    item = altered(canonical(store), old, new)
    try:
        model: ev.DomainEvent | Exception = store.mapper.to_domain_event(item).event
    except Exception as exc:  # whatever the model says, to compare with
        model = exc
    try:
        fast: object = fold_of(store, item)
    except Exception as exc:
        fast = exc
    if isinstance(model, Exception):  # rejected by the model: rejected alike
        assert type(fast) is type(model) and str(fast) == str(model)
    elif isinstance(fast, SyncedMessage):  # taken straight: it must fold as the model's event
        assert isinstance(model, ev.MessageSynced)
        assert fast == synced_message(model, model.crm_initiated)
    else:
        assert fast == model


def test_the_canonical_form_is_decoded_straight_with_its_content_opened() -> None:
    store = opened_store()
    item = canonical(store)
    assert decode_plain(item.state, store.keys) == fold_of(store, item)  # by the regex
    found = fold_of(store, item)
    assert isinstance(found, SyncedMessage)
    assert (found.subject, found.participants, found.rfc_id) == ("hello", ("a@x.test",
                                                                           "b@x.test"), "<r@x>")


def test_sealed_values_of_another_shape_are_left_to_the_model() -> None:
    store = opened_store()
    item = canonical(store)
    begin = item.state.index(b'"_sealed":"') + len(b'"_sealed":"')
    dot = item.state.index(b".", begin)
    box = store.keys.seal("t", "u", ["hello", "hi", "extra"])
    end = item.state.index(b'"', begin)
    forged = StoredEvent(item.originator_id, item.originator_version, item.topic,
                         item.state[:dot + 1] + box.encode() + item.state[end:])
    found = fold_of(store, forged)
    assert isinstance(found, ev.MessageSynced) and found.message.subject == "hello"
    assert found == store.mapper.to_domain_event(forged).event
