"""The view sealer's memos (adapters.views.seal, issue #15): bounded by bytes (the content a
box's key keeps alive counted), reusing boxes without changing a byte of what is stored (E3),
and never opening an altered box because its row was opened before (L2)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from adapters.errors import StoreError
from adapters.eventstore.content_keys import MemoryContentKeys
from adapters.views.seal import _ENTRY, ViewSealer, _Memo
from projections.ports import encode_doc
from projections.rows import OWNER_FIELD, Doc

BUDGET = 64 * 1024


class CountingSIV:
    """An AES-SIV key that counts what it seals and opens (how often a memo was missed)."""

    def __init__(self, siv: AESSIV) -> None:
        self.siv, self.sealed, self.opened = siv, 0, 0

    def encrypt(self, data: bytes, associated: list[bytes]) -> bytes:
        self.sealed += 1
        return self.siv.encrypt(data, associated)

    def decrypt(self, data: bytes, associated: list[bytes]) -> bytes:
        self.opened += 1
        return self.siv.decrypt(data, associated)


class CountingKeys(MemoryContentKeys):
    def __init__(self) -> None:
        super().__init__()
        self.counters: dict[tuple[str, str], CountingSIV] = {}

    def view_key(self, tenant: str, user: str, create: bool) -> Any:
        siv = super().view_key(tenant, user, create)
        if siv is None:
            return None
        return self.counters.setdefault((tenant, user), CountingSIV(siv))


def message_row(n: int, body_size: int = 2000) -> Doc:
    return {"id": f"m{n}", "message_id": f"<m{n}@x>", "from": "a@x", "to": ["b@x"], "cc": [],
            "subject": f"Subject {n}", "body": f"{n:08d}" + "b" * body_size,
            "sent_at": "2026-03-01T09:00:00Z", "attachments": [], OWNER_FIELD: "leo"}


def test_l2_view_memos_stay_within_their_byte_budget_whatever_the_bodies() -> None:
    keys = MemoryContentKeys()
    sealer = ViewSealer(lambda: keys, memo_budget=BUDGET)
    for n in range(2000):  # ~4 MB of bodies sealed, then opened, through a 64 KB budget each
        stored = encode_doc(sealer.seal("message", "acme", f"t\x1fm{n}", "m", message_row(n)))
        sealer.open("message", "acme", f"t\x1fm{n}", "m", orjson.loads(stored))
    assert 0 < sealer.memo_bytes() <= 2 * BUDGET


def test_l2_what_the_box_memo_keeps_alive_stays_within_its_budget() -> None:
    """Boxes are reused by their place and content themselves (a dict compares them exactly):
    the content a key keeps alive counts in the budget, measured here by the allocator rather
    than by the memo's own account."""
    keys = MemoryContentKeys()
    sealer = ViewSealer(lambda: keys, memo_budget=BUDGET)
    sealer.seal("timeline", "acme", "r\x1ft0", "t", thread_row("t0", "made first"))  # the key
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1, 2000):  # ~4 MB of subjects, each row dropped once sealed
            sealer.seal("timeline", "acme", f"r\x1ft{n}", "t",
                        thread_row(f"t{n}", f"{n:08d}" + "s" * 2000))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 2000 < held <= sealer.memo_bytes() <= BUDGET  # the account is not below the truth
    kept = next(iter(sealer._boxes._new))  # what the memo keys a box by is the point here
    assert kept[:3] == ("thread", "acme", "leo") and kept[4].endswith("s" * 2000)


def test_e3_reused_and_evicted_boxes_are_the_bytes_a_fresh_sealer_writes() -> None:
    keys = CountingKeys()
    tight = ViewSealer(lambda: keys, memo_budget=8 * 1024)  # evicts after a few rows

    def rows(sealer: ViewSealer) -> list[bytes]:
        return [encode_doc(doc) for n in range(40) for doc in (
            sealer.seal("message", "acme", f"t\x1fm{n}", "m", message_row(n)),
            sealer.seal("timeline", "acme", f"r\x1ft{n}", "t",
                        thread_row(f"t{n}", f"{n}" + "s" * 500)))]

    first, again = rows(tight), rows(tight)
    assert keys.counters[("acme", "leo")].sealed > 80 + 40  # threads evicted: sealed again
    assert first == again == rows(ViewSealer(lambda: keys))


def test_view_memo_reuses_a_box_for_the_same_place_and_content() -> None:
    keys = CountingKeys()
    sealer = ViewSealer(lambda: keys)
    thread = {"thread": "t1", "mailbox": "mb", "owner": "leo", "subject": "Otter",
              "messages": []}
    for _ in range(5):  # a thread's timeline and mailbox rows rewritten at each of its events
        sealer.seal("timeline", "acme", "r1\x1ft1", "t", thread)
        sealer.seal("mailbox", "acme", "leo\x1ft1", "t", thread)
    counter = keys.counters[("acme", "leo")]
    assert counter.sealed == 1
    sealer.seal("timeline", "acme", "r1\x1ft1", "t", {**thread, "subject": "Other"})
    assert counter.sealed == 2  # other content: a box of its own
    stored = encode_doc(sealer.seal("message", "acme", "t1\x1fm1", "m", message_row(1)))
    for _ in range(3):
        sealer.open("message", "acme", "t1\x1fm1", "m", orjson.loads(stored))
    assert counter.opened == 1


def test_l2_an_altered_box_does_not_open_though_its_row_was_opened_before() -> None:
    keys = MemoryContentKeys()
    sealer = ViewSealer(lambda: keys)
    doc = orjson.loads(encode_doc(sealer.seal("message", "acme", "t\x1fm1", "m",
                                              message_row(1, 40))))
    sealer.open("message", "acme", "t\x1fm1", "m", dict(doc))
    owner, box = doc["sealed"]
    tail = "A" if box[-6] != "A" else "B"  # past the SIV tag: the tag alone would still match
    doc["sealed"] = [owner, box[:-6] + tail + box[-5:]]
    with pytest.raises(StoreError, match="does not open"):
        sealer.open("message", "acme", "t\x1fm1", "m", doc)


def test_view_memo_keeps_what_was_used_recently_and_counts_its_bytes() -> None:
    memo: _Memo[bytes, bytes] = _Memo(10 * (100 + _ENTRY))  # five entries of 100 bytes a generation
    for n in range(5):
        memo.put(b"%d" % n, b"v" * 100)
    assert memo.get(b"0") is not None  # used: moved forward...
    for n in range(5, 9):
        memo.put(b"%d" % n, b"v" * 100)
    assert memo.get(b"0") is not None  # ...so it outlives entries put after it
    assert memo.get(b"1") is None or memo.get(b"2") is None
    assert memo.held() <= 10 * (100 + _ENTRY)
    memo.put(b"large", b"v" * 2000)  # more than a generation holds: not kept
    assert memo.get(b"large") is None and memo.held() <= 10 * (100 + _ENTRY)


def thread_row(thread: str, subject: str) -> Doc:
    return {"thread": thread, "mailbox": "mb", "owner": "leo", "subject": subject,
            "messages": []}


def test_l2_boxes_reused_within_a_batch_open_only_in_their_own_place() -> None:
    keys = CountingKeys()
    sealer = ViewSealer(lambda: keys)
    same = message_row(1, 40)
    batch = sealer.encoded({
        "message": {("acme", "t1\x1fm1"): {"m": same}, ("acme", "t2\x1fm1"): {"m": same}},
        "message_history": {("acme", "t1\x1fm1"): {"001": {"m": same}}},
        "timeline": {("acme", "r1\x1ft1"): {"t": thread_row("t1", "Otter")},
                     ("acme", "r1\x1ft2"): {"t": thread_row("t2", "Otter")}},
        "mailbox": {("acme", "leo\x1ft1"): {"t": thread_row("t1", "Otter")}}})
    stored = {(p, k): orjson.loads(doc) for p, rows in batch.items() for _, k, _, doc in rows}
    box = {pk: doc["sealed"][1] for pk, doc in stored.items() if "sealed" in doc}
    box[("message_history", "t1\x1fm1")] = stored[("message_history", "t1\x1fm1")]["m"][
        "sealed"][1]
    # a message's live row and its version share a box; a thread's timeline and mailbox rows
    # too; equal content in another place has a box of its own
    assert box[("message", "t1\x1fm1")] == box[("message_history", "t1\x1fm1")]
    assert box[("message", "t1\x1fm1")] != box[("message", "t2\x1fm1")]
    assert box[("timeline", "r1\x1ft1")] == box[("mailbox", "leo\x1ft1")]
    assert box[("timeline", "r1\x1ft1")] != box[("timeline", "r1\x1ft2")]
    assert keys.counters[("acme", "leo")].sealed == 4  # two messages, two threads
    moved = dict(stored[("message", "t2\x1fm1")])
    moved["sealed"] = ["leo", box[("message", "t1\x1fm1")]]  # t1's box put in t2's row
    with pytest.raises(StoreError, match="does not open"):
        sealer.open("message", "acme", "t2\x1fm1", "m", moved)
    with pytest.raises(StoreError, match="does not open"):  # t1's subject in t2's thread
        sealer.open("timeline", "acme", "r1\x1ft2", "t", {**stored[("timeline", "r1\x1ft2")],
                                                          "sealed": ["leo", box[(
                                                              "timeline", "r1\x1ft1")]]})
    altered = dict(stored[("message", "t1\x1fm1")])
    reused = box[("message", "t1\x1fm1")]
    altered["sealed"] = ["leo", reused[:-6] + ("A" if reused[-6] != "A" else "B") + reused[-5:]]
    with pytest.raises(StoreError, match="does not open"):
        sealer.open("message", "acme", "t1\x1fm1", "m", altered)


def test_l2_a_memoised_box_is_not_used_once_its_owner_key_is_destroyed() -> None:
    keys = MemoryContentKeys()
    sealer = ViewSealer(lambda: keys)
    row = message_row(1, 40)
    before = sealer.encoded({"message": {("acme", "t1\x1fm1"): {"m": row}},
                             "timeline": {("acme", "r1\x1ft1"): {"t": thread_row("t1", "O")}}})
    keys.destroy("acme", "leo", "2026-03-02T00:00:00Z")
    after = sealer.encoded({"message": {("acme", "t1\x1fm1"): {"m": row}},
                            "timeline": {("acme", "r1\x1ft1"): {"t": thread_row("t1", "O")}}})
    message = orjson.loads(after["message"][0][3])
    assert (message["subject"], message["body"], message["erased"], "sealed" in message) == (
        None, None, True, False)
    thread = orjson.loads(after["timeline"][0][3])
    assert (thread["subject"], thread["erased"], "sealed" in thread) == (None, True, False)
    opened = sealer.open("message", "acme", "t1\x1fm1", "m",
                         orjson.loads(before["message"][0][3]))
    assert (opened["subject"], opened["body"], opened["erased"]) == (None, None, True)


class Sneaky(str):
    """Text that claims to equal any text."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("Otter")


def test_l2_content_equal_only_across_types_gets_its_own_box() -> None:
    keys = MemoryContentKeys()
    sealer = ViewSealer(lambda: keys)

    def sealed(doc: Doc) -> Doc:
        return sealer.open("message", "acme", "t1\x1fm1", "m", orjson.loads(encode_doc(
            sealer.seal("message", "acme", "t1\x1fm1", "m", doc))))

    def named(name: object) -> Doc:
        return {**message_row(1, 10), "attachments": [
            {"name": name, "size": 1, "content_type": "x"}]}

    # 1 == 1.0 == True in Python, not in the sealed JSON: each opens to what it sealed
    assert [sealed(named(v))["attachments"][0]["name"] for v in (1, True, 1.0, 1)] == [
        1, True, 1.0, 1]
    sealer.seal("timeline", "acme", "r1\x1ft1", "t", thread_row("t1", "Otter"))
    sneaky = sealer.seal("timeline", "acme", "r1\x1ft1", "t", thread_row("t1", Sneaky("Eel")))
    opened = sealer.open("timeline", "acme", "r1\x1ft1", "t", orjson.loads(encode_doc(sneaky)))
    assert opened["subject"] == "Eel" and str.__eq__(opened["subject"], "Eel")
