"""E3 for the event store's fast path (adapters.eventstore.synced_decode), attacked: whatever the
stored bytes of a MessageSynced hold, the fold reads what the model path reads of them (the
same record, or the same refusal). Hostile text in every field (controls, NUL, quotes,
backslashes, the placeholders, long texts), stored sealed, erased or in plaintext; the same
JSON spelled another way; times of the encoder's shape with any digits; broken seals."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.eventstore.store import EventStore, stream_id
from domain import events as ev
from domain.mail_folds import SyncedMessage, synced_message
from domain.state import TenantState, evolve

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOSTILE_BITS = ["\x00", "\x00erased", '"', "\\", '","', '"subject":"\\u0000erased"',
                '"body":""', "\u2028", "\ufeff", "\U0001f600", "\x7f", "\x1f", "é", "",
                "null", "[]", "{", "}", ":", "\\u0000", "\n", "\t"]
hostile = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(HOSTILE_BITS) | st.text(max_size=3), max_size=6).map("".join),
    st.text(st.characters(max_codepoint=0x7f), max_size=12),
    st.integers(0, 3).map(lambda n: "x" * (70_000 * n + 1)),  # long: past any small buffer
)
maybe = st.none() | hostile
addresses = st.lists(hostile, max_size=3)


def head(kind: type[ev.DomainEvent], at: datetime = T0, **fields: Any) -> ev.DomainEvent:
    return kind(tenant="t", actor="system:test", occurred_at=at, correlation_id="c", **fields)


def opened_store(sealed: bool = True) -> EventStore:
    store = EventStore.in_memory()
    store.mapper.seal = sealed  # off: events as stored before content was sealed (plaintext)
    store.append_raw("t", 0, [
        head(ev.UserAdded, user="u", email="u@x.test", role="member"),
        head(ev.MailboxConnected, mailbox="mb", user="u", provider="gmail", address="u@x.test",
             scope={}, backfill_days=30, credentials_set=False)])
    return store


def outcome(call: Callable[[], object]) -> object:
    """What a decoding answers, comparable: the fold's record (with the offset of its time,
    which equality of aware datetimes ignores and `last_at` keeps), or the refusal."""
    try:
        found = call()
    except Exception as exc:
        return ("refused", type(exc).__name__, str(exc))
    if isinstance(found, ev.MessageSynced):
        found = synced_message(found, found.crm_initiated)
    if isinstance(found, SyncedMessage):
        return ("read", found, found.occurred_at.utcoffset())
    return ("other", found)


def without_content(found: object) -> object:
    """An outcome as a state without message content folds it (the model's event is stripped
    by the fold, `synced_message(..., content=False)`)."""
    if isinstance(found, tuple) and found[0] == "read":
        return ("read", found[1]._replace(participants=(), subject="", sent_at=""), found[2])
    return found


def assert_read_alike(store: EventStore, item: StoredEvent) -> object:
    """The fast reader answers as the model; the command side's (without content) reads the
    same fields where the model reads the event, and refuses where it refuses, except a seal,
    which it does not open."""
    model = outcome(lambda: store.mapper.to_domain_event(item).event)
    fast = outcome(lambda: store.mapper.to_fold(stream_id("t"), item.originator_version,
                                                item.topic, item.state))
    assert fast == model
    lean = without_content(outcome(lambda: store.mapper.to_fold(
        stream_id("t"), item.originator_version, item.topic, item.state, False)))
    if model[0] == "read" or b'"_sealed":' not in item.state:  # type: ignore[index]
        assert lean == without_content(model)
    return fast


def stored(store: EventStore) -> list[StoredEvent]:
    return list(store.app.recorder.select_events(stream_id("t")))


def with_state(item: StoredEvent, state: bytes) -> StoredEvent:
    return StoredEvent(item.originator_id, item.originator_version, item.topic, state)


def canonical(store: EventStore, **changes: object) -> StoredEvent:
    message = {"id": "m1", "message_id": "<r@x>", "from": "A@x.test", "to": ["b@x.test"],
               "subject": "hello", "body": "hi", "sent_at": T0, "labels": ["INBOX"],
               **changes}
    store.append_raw("t", 2, [head(ev.MessageSynced, mailbox="mb", thread="mb:a",
                                   message=ev.MailMessage.model_validate(message))])
    return stored(store)[2]


messages = st.fixed_dictionaries({
    "id": hostile, "message_id": maybe, "thread_id": maybe, "in_reply_to": maybe,
    "references": st.none() | addresses, "from": hostile, "to": addresses, "cc": addresses,
    "bcc": addresses, "subject": hostile, "body": hostile, "labels": addresses,
    "delivery_status": maybe, "read": st.booleans()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, hostile, hostile, maybe, st.booleans()), min_size=1,
                max_size=3),
       st.sampled_from(["sealed", "erased", "plaintext"]))
def test_e3_fast_decode_equals_model_on_hostile_text(
        batch: list[tuple[dict[str, Any], str, str, str | None, bool]], how: str) -> None:
    store = opened_store(sealed=how != "plaintext")
    events: list[ev.DomainEvent] = []
    for m, mailbox, thread, command, crm in batch:  # the mailbox id hostile too: connected
        events += [head(ev.MailboxConnected, mailbox=mailbox, user="u", provider="gmail",
                        address="u@x.test", scope={}, backfill_days=30, credentials_set=False),
                   head(ev.MessageSynced, mailbox=mailbox, thread=thread, command_id=command,
                        crm_initiated=crm,
                        message=ev.MailMessage.model_validate({**m, "sent_at": T0}))]
    store.append_raw("t", 2, events)
    if how == "erased":
        store.erase_user("t", "u", T0)
    for item in stored(store)[3::2]:
        found = assert_read_alike(store, item)
        # the mapper's own form is always taken straight (the fast path is not dead code)
        assert found[0] == "read"  # type: ignore[index]
    by_model = TenantState("t", message_content=False)  # the tenant's whole state folds alike
    for seq, event in store.tenant_events("t"):
        evolve(by_model, event, seq)
    assert store.state("t") == by_model


def _respelled_body(how: Callable[[dict[str, Any]], bytes]) -> Callable[[bytes], bytes]:
    """A respelling of the event's own JSON, its chain link and seal kept in front as stored
    (so the model still finds them)."""
    def respell(state: bytes) -> bytes:
        at = state.index(b'"tenant":')
        return state[:at] + how(orjson.loads(b"{" + state[at:]))[1:]
    return respell


def _message_first(doc: dict[str, Any]) -> bytes:
    return orjson.dumps({"message": doc["message"], **doc})


RESPELLINGS: dict[str, Callable[[bytes], bytes]] = {
    "ascii escapes": _respelled_body(lambda doc: json.dumps(
        doc, ensure_ascii=True, separators=(",", ":")).encode()),
    "spaces": _respelled_body(lambda doc: json.dumps(doc, ensure_ascii=False).encode()),
    "message keys reversed": _respelled_body(lambda doc: orjson.dumps(
        {**doc, "message": dict(reversed(list(doc["message"].items())))})),
    "event keys reversed": _respelled_body(
        lambda doc: orjson.dumps(dict(reversed(list(doc.items()))))),
    "message first": _respelled_body(_message_first),
    "whole document reordered": lambda state: orjson.dumps(
        dict(reversed(list(orjson.loads(state).items())))),
    "placeholder with an escaped letter": lambda state: state.replace(
        b'"subject":"\\u0000erased"', b'"subject":"\\u0000\\u0065rased"', 1),
    "placeholder twice": lambda state: state.replace(
        b'"subject":"\\u0000erased"', b'"subject":"x","subject":"\\u0000erased"', 1),
    "placeholder then another subject": lambda state: state.replace(
        b'"subject":"\\u0000erased"', b'"subject":"\\u0000erased","subject":"x"', 1),
    "body spelled with a space": lambda state: state.replace(b'"body":""', b'"body": ""', 1),
    "tenant escaped": lambda state: state.replace(b'"tenant":"t"', b'"tenant":"\\u0074"', 1),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.sampled_from(sorted(RESPELLINGS)), st.sampled_from(["sealed", "erased",
                                                                       "plaintext"]))
def test_e3_fast_decode_equals_model_on_the_same_json_spelled_otherwise(
        message: dict[str, Any], respelling: str, how: str) -> None:
    store = opened_store(sealed=how != "plaintext")
    item = canonical(store, **message)
    if how == "erased":
        store.erase_user("t", "u", T0)
    assert_read_alike(store, with_state(item, RESPELLINGS[respelling](item.state)))


@pytest.mark.parametrize("respelling", sorted(RESPELLINGS))
@pytest.mark.parametrize("how", ["sealed", "erased", "plaintext"])
def test_e3_fast_decode_equals_model_on_each_respelling_of_a_plain_message(
        respelling: str, how: str) -> None:
    store = opened_store(sealed=how != "plaintext")
    item = canonical(store)
    if how == "erased":
        store.erase_user("t", "u", T0)
    respelled = RESPELLINGS[respelling](item.state)
    # (an ASCII message has nothing to escape; a plaintext one has no placeholders)
    assert respelled != item.state or respelling == "ascii escapes" or how == "plaintext"
    assert_read_alike(store, with_state(item, respelled))


@pytest.mark.parametrize("text", HOSTILE_BITS)
@pytest.mark.parametrize("how", ["sealed", "erased", "plaintext"])
def test_e3_fast_decode_equals_model_on_each_hostile_text_in_every_field(
        text: str, how: str) -> None:
    store = opened_store(sealed=how != "plaintext")
    store.append_raw("t", 2, [
        head(ev.MailboxConnected, mailbox=text, user="u", provider="gmail", address="u@x.test",
             scope={}, backfill_days=30, credentials_set=False),
        head(ev.MessageSynced, mailbox=text, thread=text, command_id=text, message=ev.MailMessage(
            id=text, message_id=text, thread_id=text, in_reply_to=text, references=[text, text],
            from_=text, to=[text], cc=[text, "x"], bcc=[text], subject=text, body=text,
            sent_at=T0, labels=[text], delivery_status=text)),
        head(ev.MessageSynced, mailbox="mb", thread="mb:a", message=ev.MailMessage(  # alone
            id="m2", from_="a@x.test", to=[], subject=text, body="b", sent_at=T0))])
    if how == "erased":
        store.erase_user("t", "u", T0)
    for item in stored(store)[3:]:
        found = assert_read_alike(store, item)
        assert found[0] == "read"  # type: ignore[index]


def test_e3_fast_decode_of_a_reordered_sealed_event_opens_its_content_as_the_model_does() -> None:
    store = opened_store()
    item = canonical(store)
    found = assert_read_alike(store, with_state(item, RESPELLINGS["event keys reversed"](
        item.state)))
    assert found[0] == "read" and found[1].subject == "hello"  # type: ignore[index]


# -- times: the encoder's shape (`YYYY-MM-DDThh:mm:ss[.ffffff]±hh:mm`) with any digits
def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


shaped_times = st.builds(
    lambda y, mo, d, h, mi, s, frac, sign, oh, om: (
        f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{sign}{oh}:{om}"),
    _digits(4), _digits(2), _digits(2), _digits(2), _digits(2), _digits(2),
    st.just("") | _digits(6).map(lambda f: "." + f), st.sampled_from("+-"), _digits(2),
    _digits(2))
near_times = st.builds(  # mostly valid: hours, minutes and offsets near their limits
    lambda at, sign, oh, om: (T0 + timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%S")
    + f"{sign}{oh:02d}:{om:02d}", st.integers(-10**9, 10**9), st.sampled_from("+-"),
    st.integers(0, 25), st.integers(0, 99))
TIME_FIELDS = [b'"occurred_at":"2026-01-01T00:00:00+00:00"',
               b'"sent_at":"2026-01-01T00:00:00+00:00"']


@settings(max_examples=300, deadline=None)
@given(shaped_times | near_times, st.sampled_from(TIME_FIELDS))
def test_e3_fast_decode_reads_every_time_of_the_encoders_shape_as_the_model_does(
        text: str, where: bytes) -> None:
    item = CANONICAL
    field = where.split(b":", 1)[0]
    state = item.state.replace(where, field + b':"' + text.encode() + b'"', 1)
    assert_read_alike(STORE, with_state(item, state))


@pytest.mark.parametrize("offset", ["+05:99", "+00:60", "-00:60", "+09:98", "-21:95"])
@pytest.mark.parametrize("where", TIME_FIELDS)
def test_e3_fast_decode_refuses_a_time_offset_of_sixty_minutes_or_more(
        offset: str, where: bytes) -> None:
    # Python's fromisoformat reads `+05:99` as 6 h 39 min; the model refuses it
    field = where.split(b":", 1)[0]
    state = CANONICAL.state.replace(
        where, field + b':"2026-01-01T00:00:00' + offset.encode() + b'"', 1)
    found = assert_read_alike(STORE, with_state(CANONICAL, state))
    assert found[0] == "refused"  # type: ignore[index]


# -- a broken seal: refused as the model refuses it (the same error, not a raw one)
def _seal_parts(item: StoredEvent) -> tuple[bytes, bytes]:
    begin = item.state.index(b'"_sealed":"') + len(b'"_sealed":"')
    dot = item.state.index(b".", begin)
    end = item.state.index(b'"', begin)
    return item.state[begin:dot], item.state[dot + 1:end]


@pytest.mark.parametrize(("owner", "box", "answer"), [
    (b"A", None, "refused"),  # base64 of no whole byte
    (b"_w", None, "refused"),  # not UTF-8 once decoded
    (b"", None, "read"),  # nobody: no key, so erased (both ways)
    (None, b"A", "refused"),
    (None, b"", "refused"),
    (None, b"AAAA", "refused"),  # a nonce too short
    (None, b"AAAAAAAAAAAAAAAA", "refused"),  # nothing after the nonce
])
def test_e3_fast_decode_refuses_a_broken_seal_as_the_model_does(
        owner: bytes | None, box: bytes | None, answer: str) -> None:
    item = CANONICAL
    was_owner, was_box = _seal_parts(item)
    state = item.state.replace(b'"_sealed":"' + was_owner + b"." + was_box + b'"',
                               b'"_sealed":"' + (was_owner if owner is None else owner) + b"."
                               + (was_box if box is None else box) + b'"', 1)
    found = assert_read_alike(STORE, with_state(item, state))
    assert found[0] == answer  # type: ignore[index]


STORE = opened_store()
CANONICAL = canonical(STORE)
