"""The packed message table gives back exactly what was stored (the projector's memory diet)."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.message_table import Codec, Message, MessageTable, RfcIndex

texts = st.text(max_size=20)
messages = st.builds(
    Message, id=texts, thread=texts, rfc_id=st.none() | texts,
    participants=st.lists(texts, max_size=4).map(tuple), subject=texts, sent_at=texts,
    labels=st.lists(texts, max_size=3).map(tuple), read=st.booleans(),
    delivery_status=st.none() | texts, deleted=st.booleans())


@given(st.lists(messages, max_size=5))
def test_packing_round_trips_any_message(batch: list[Message]) -> None:
    codec = Codec()  # the numbers given to earlier messages' texts do not change later ones
    packed = [codec.pack(m) for m in batch]
    assert [codec.unpack(m.id, p) for m, p in zip(batch, packed, strict=True)] == batch


def test_table_is_a_mapping_by_mailbox_and_id() -> None:
    table = MessageTable()
    m1 = Message("m1", "mb:t1", "<a@x>", ("a@x", "b@y"), "Hello", "2025-01-01T00:00:00+00:00",
                 ("INBOX",), False, None)
    table[("mb", "m1")] = m1
    table[("mb2", "m1")] = replace(m1, thread="mb2:t1")
    assert len(table) == 2 and ("mb", "m1") in table and ("mb", "m2") not in table
    assert table[("mb", "m1")] == m1 and table.get(("mb", "zz")) is None
    assert set(table) == {("mb", "m1"), ("mb2", "m1")}
    table[("mb", "m1")] = replace(m1, read=True)  # rewriting does not count twice
    assert len(table) == 2 and table[("mb", "m1")].read
    del table[("mb2", "m1")]
    assert dict(table.items()) == {("mb", "m1"): replace(m1, read=True)}


def test_a_message_read_from_the_table_cannot_be_changed_in_place() -> None:
    table = MessageTable()
    table[("mb", "m1")] = Message("m1", "mb:t", None, (), "", "", (), False, None)
    with pytest.raises(FrozenInstanceError):
        table[("mb", "m1")].read = True  # type: ignore[misc]


def test_a_message_is_stored_under_its_own_id() -> None:
    with pytest.raises(ValueError, match="stored under id"):
        MessageTable()[("mb", "other")] = Message("m1", "mb:t", None, (), "", "", (), False, None)


@pytest.mark.parametrize("sent_at", [
    "2025-01-01T00:00:01+00:00", "2025-01-01T01:06:40.010000+00:00",
    "1969-12-31T23:59:59.500000+00:00", "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00", "2025-01-01T00:00:01+02:00", "~123", "~~x", "~", "",
    "2025-01-01T00:00:01.5+00:00", "2025-0a-01T00:00:01+00:00", "2025-01-01T00:00:01x+00:00",
    "\u0662025-01-01T00:00:01+00:00", "2025-01-01 00:00:01+00:00", "+00:00"])
def test_utc_times_are_packed_short_and_come_back_as_the_same_text(sent_at: str) -> None:
    message = Message("m1", "mb:t", None, (), "", sent_at, (), False, None)
    codec = Codec()
    packed = codec.pack(message)
    assert codec.unpack("m1", packed).sent_at == sent_at
    if sent_at.endswith("+00:00") and len(sent_at) >= 25 and sent_at.isascii() \
            and "a" not in sent_at and "x" not in sent_at and " " not in sent_at:
        assert sent_at.encode() not in packed  # stored without its punctuation


def _message(i: int, **changes: object) -> Message:
    base = Message(f"m{i}", f"mb:t{i // 4}", f"<m{i}@x>", ("a@x", f"b{i}@y"), f"S {i}",
                   "2025-01-01T00:00:01+00:00", ("INBOX",), False, None)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_thousands_of_messages_rewritten_many_times_read_back_as_last_written() -> None:
    table = MessageTable()
    for i in range(5000):
        table[("mb", f"m{i}")] = _message(i)
    for _ in range(3):  # rewrites leave dead records behind until they are compacted away
        for i in range(0, 5000, 2):
            table[("mb", f"m{i}")] = replace(table[("mb", f"m{i}")], read=not table[
                ("mb", f"m{i}")].read)
    assert len(table) == 5000
    assert all(table[("mb", f"m{i}")] == _message(i, read=i % 2 == 0) for i in range(5000))
    assert [k for k in table][:3] == [("mb", "m0"), ("mb", "m1"), ("mb", "m2")]


def test_a_pickled_table_finds_its_messages_by_id_and_by_rfc_id() -> None:
    table = MessageTable()
    for i in range(100):
        table[("mb", f"m{i}")] = _message(i)
        table.index_rfc("mb", f"<m{i}@x>", f"m{i}")
    copy = pickle.loads(pickle.dumps(table))
    assert copy[("mb", "m42")] == _message(42) and ("mb", "m100") not in copy
    assert RfcIndex(copy).get(("mb", "<m42@x>")) == "mb:t10"


def test_s13_the_first_message_with_an_rfc_id_keeps_it() -> None:
    table = MessageTable()
    table[("mb", "m1")] = _message(1, rfc_id="<same@x>", thread="mb:first")
    table[("mb", "m2")] = _message(2, rfc_id="<same@x>", thread="mb:second")
    table.index_rfc("mb", "<same@x>", "m1")
    table.index_rfc("mb", "<same@x>", "m2")
    index = RfcIndex(table)
    assert index.get(("mb", "<same@x>")) == "mb:first"
    assert ("mb", "<same@x>") in index and ("mb2", "<same@x>") not in index
    assert index.get(("mb", "<other@x>")) is None
