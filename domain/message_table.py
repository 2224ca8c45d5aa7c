"""The messages of a tenant, each packed into one bytes object (pure, no I/O).

A projection runner holds every message of a tenant in memory; as Python objects (a dataclass,
its strings, a tuple key) one costs about 600 bytes, packed about 150. `MessageTable` is a
mapping `(mailbox, provider message id) -> Message` that packs on write and unpacks on read:
a `Message` read from it is a frozen copy, so a change is written back with
`table[key] = dataclasses.replace(msg, ...)` and a forgotten write-back fails loudly.

Packing: `\\x02` + the fields joined by `\\x1f` (lists by `\\x1e`) in UTF-8, a UTC time as
`~YYYYMMDDhhmmss[.fraction]` (the ISO text without its punctuation); a message whose text
contains either separator, or an empty label or address, is packed as a JSON array instead
(first byte `[`).
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import orjson

_TEXT, _FIELD, _ITEM = "\x02", "\x1f", "\x1e"


def _compact_time(iso: str) -> str:
    """`2025-01-01T00:00:01+00:00` -> `~20250101000001` (a fraction kept: `~…01.250000`), by
    slicing (no date arithmetic: this runs for every message folded); anything else is kept as
    it is (a text of its own that starts with `~` gets a second one)."""
    if iso.startswith("~"):
        return "~" + iso
    if len(iso) < 25 or not iso.endswith("+00:00") or iso[4] != "-" or iso[7] != "-" \
            or iso[10] != "T" or iso[13] != ":" or iso[16] != ":":
        return iso
    digits = iso[0:4] + iso[5:7] + iso[8:10] + iso[11:13] + iso[14:16] + iso[17:19]
    fraction = iso[19:-6]
    if not (digits.isascii() and digits.isdigit()) or (fraction and not (
            fraction[0] == "." and fraction[1:].isascii() and fraction[1:].isdigit())):
        return iso
    return "~" + digits + fraction


def _full_time(text: str) -> str:
    if not text.startswith("~"):
        return text
    if text.startswith("~~"):
        return text[1:]
    return (f"{text[1:5]}-{text[5:7]}-{text[7:9]}T{text[9:11]}:{text[11:13]}:{text[13:15]}"
            f"{text[15:]}+00:00")


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the rules need it: its participants (from, to, cc, bcc, lowercased), never
    the body or attachments (they stay in the events)."""

    id: str
    thread: str
    rfc_id: str | None
    participants: tuple[str, ...]
    subject: str
    sent_at: str  # ISO-8601 in UTC: sorts like the time, answers need no conversion
    labels: tuple[str, ...]
    read: bool
    delivery_status: str | None
    deleted: bool = False


def pack(m: Message) -> bytes:
    texts = (m.thread, m.rfc_id or "", *m.participants, m.subject, m.sent_at, *m.labels,
             m.delivery_status or "")
    if "" in m.participants or "" in m.labels or any(_FIELD in t or _ITEM in t for t in texts):
        return orjson.dumps([m.thread, m.rfc_id, m.participants, m.subject, m.sent_at, m.labels,
                             m.read, m.delivery_status, m.deleted])
    flags = ("1" if m.read else "0") + ("1" if m.deleted else "0") + (
        "0" if m.rfc_id is None else "1") + ("0" if m.delivery_status is None else "1")
    return _FIELD.join((_TEXT + m.thread, m.rfc_id or "", _ITEM.join(m.participants), m.subject,
                        _compact_time(m.sent_at), _ITEM.join(m.labels), flags,
                        m.delivery_status or "")).encode()


def unpack(message_id: str, data: bytes) -> Message:
    if data[:1] == b"[":
        thread, rfc, people, subject, sent, labels, read, status, deleted = orjson.loads(data)
        return Message(message_id, thread, rfc, tuple(people), subject, sent, tuple(labels),
                       read, status, deleted)
    thread, rfc, people, subject, sent, labels, flags, status = data.decode().split(_FIELD)
    return Message(message_id, thread[1:], rfc if flags[2] == "1" else None,
                   tuple(people.split(_ITEM)) if people else (), subject, _full_time(sent),
                   tuple(labels.split(_ITEM)) if labels else (), flags[0] == "1",
                   status if flags[3] == "1" else None, flags[1] == "1")


_ROW_BITS = 26  # a slot: the top 6 bits of the key's CRC-32 (most probes stop there), row + 1
_ROW_MASK = (1 << _ROW_BITS) - 1
_MAX_ROWS = _ROW_MASK - 1


def _crc(key: bytes) -> int:
    return zlib.crc32(key)


class _Index:
    """An open-addressing index of rows by the CRC-32 of a key, 4 bytes a slot, at most two
    thirds full. The caller checks a candidate row's key (`match`)."""

    __slots__ = ("slots", "used")

    def __init__(self, size: int = 8) -> None:
        self.slots = array("I", bytes(4 * size))
        self.used = 0

    def find(self, crc: int, match: Callable[[int], bool]) -> int:
        slots, mask, tag = self.slots, len(self.slots) - 1, crc >> _ROW_BITS
        at = crc & mask
        while (taken := slots[at]) != 0:
            if taken >> _ROW_BITS == tag and match((taken & _ROW_MASK) - 1):
                return (taken & _ROW_MASK) - 1
            at = (at + 1) & mask
        return -1

    def find_or_add(self, crc: int, match: Callable[[int], bool], row: int) -> int:
        """The matching row if there is one; else `row` is added (-1 is returned)."""
        slots, mask, tag = self.slots, len(self.slots) - 1, crc >> _ROW_BITS
        at = crc & mask
        while (taken := slots[at]) != 0:
            if taken >> _ROW_BITS == tag and match((taken & _ROW_MASK) - 1):
                return (taken & _ROW_MASK) - 1
            at = (at + 1) & mask
        if row >= _MAX_ROWS:
            raise ValueError(f"more than {_MAX_ROWS} messages in one mailbox")
        slots[at] = tag << _ROW_BITS | (row + 1)
        self.used += 1
        return -1

    def add(self, crc: int, row: int) -> None:
        if row >= _MAX_ROWS:
            raise ValueError(f"more than {_MAX_ROWS} messages in one mailbox")
        slots, mask = self.slots, len(self.slots) - 1
        at = crc & mask
        while slots[at] != 0:
            at = (at + 1) & mask
        slots[at] = (crc >> _ROW_BITS) << _ROW_BITS | (row + 1)
        self.used += 1

    def full(self) -> bool:
        return (self.used + 1) * 3 > len(self.slots) * 2


class _Box:
    """One mailbox's messages with no Python object per message (issue #15): the records (the
    id, then the packed message) appended to one bytearray, `rows` the offset of each message's
    latest record, and indexes of rows by a CRC-32 of the id and of the RFC Message-ID (stable
    across processes, so a pickled table needs no rebuilding). A rewrite appends a new record;
    the old ones are dropped when they outweigh the live ones."""

    __slots__ = ("data", "dead", "ids", "rfcs", "rows")

    def __init__(self) -> None:
        self.data = bytearray()
        self.rows = array("q")  # row -> offset of its record; -1: removed
        self.ids = _Index()  # removed rows keep their slots: probes go past them
        # S13 on the command side: the first row with each RFC Message-ID (kept when asked)
        self.rfcs = _Index()
        self.dead = 0  # bytes of records no row points at any more

    def record(self, row: int) -> tuple[str, bytes]:
        data, at = self.data, self.rows[row]
        id_end = at + 2 + (data[at] | data[at + 1] << 8)
        length = int.from_bytes(data[id_end:id_end + 4], "little")
        text = data[at + 2:id_end].decode("utf-8", "surrogatepass")
        return text, bytes(data[id_end + 4:id_end + 4 + length])

    def _id_is(self, row: int, key: bytes) -> bool:
        data, at = self.data, self.rows[row]
        return at >= 0 and data[at + 2:at + 2 + (data[at] | data[at + 1] << 8)] == key

    def find(self, key: bytes) -> int:
        """The row of the message with this (UTF-8) id; -1 if none."""
        return self.ids.find(_crc(key), lambda row: self._id_is(row, key))

    def put(self, key: bytes, packed: bytes) -> tuple[int, bool]:
        """Store; the message's row, and True when the message is new."""
        row = self.find(key)
        if row >= 0:
            self.dead += self._size(self.rows[row])
            self.rows[row] = self._append(key, packed)
            if self.dead > 65536 and self.dead > len(self.data) // 2:
                self._compact()
            return row, False
        if self.ids.full():
            self.ids = self._reindexed(self.ids, self._id)
        self.rows.append(self._append(key, packed))
        self.ids.add(_crc(key), len(self.rows) - 1)
        return len(self.rows) - 1, True

    def rfc_row(self, rfc: str) -> int:
        """The first row indexed under this RFC Message-ID; -1 if none."""
        key = rfc.encode("utf-8", "surrogatepass")
        return self.rfcs.find(_crc(key), lambda row: self.rows[row] >= 0 and self._rfc(row) == key)

    def index_rfc(self, rfc: str, row: int) -> None:
        """Index `row` under `rfc` unless a row is indexed under it already (first come wins)."""
        if self.rfcs.full():
            self.rfcs = self._reindexed(self.rfcs, self._rfc)
        key = rfc.encode("utf-8", "surrogatepass")
        self.rfcs.find_or_add(_crc(key), lambda r: self.rows[r] >= 0 and self._rfc(r) == key,
                              row)

    def remove(self, row: int) -> None:
        self.dead += self._size(self.rows[row])
        self.rows[row] = -1

    def _append(self, key: bytes, packed: bytes) -> int:
        if len(key) > 0xFFFF:
            raise ValueError("a message id longer than 65,535 bytes")
        at = len(self.data)
        self.data += len(key).to_bytes(2, "little") + key + len(packed).to_bytes(4, "little")
        self.data += packed
        return at

    def _id(self, row: int) -> bytes:
        data, at = self.data, self.rows[row]
        return bytes(data[at + 2:at + 2 + (data[at] | data[at + 1] << 8)])

    def _rfc(self, row: int) -> bytes:
        """The row's RFC Message-ID in UTF-8 (b"" for none), without unpacking the rest."""
        message_id, packed = self.record(row)
        if packed[:1] == _TEXT.encode():
            return packed.split(_FIELD.encode(), 2)[1]
        rfc = unpack(message_id, packed).rfc_id
        return b"" if rfc is None else rfc.encode("utf-8", "surrogatepass")

    def _size(self, at: int) -> int:
        data = self.data
        id_end = at + 2 + (data[at] | data[at + 1] << 8)
        return id_end + 4 + int.from_bytes(data[id_end:id_end + 4], "little") - at

    def _reindexed(self, old: _Index, key_of: Callable[[int], bytes]) -> _Index:
        """A larger index of the live rows of `old` (at most a third full)."""
        rows = [(s & _ROW_MASK) - 1 for s in old.slots if s != 0]
        live = [r for r in rows if self.rows[r] >= 0]
        size = len(old.slots)
        while (len(live) + 1) * 3 > size:
            size *= 2
        index = _Index(size)
        for row in live:
            index.add(_crc(key_of(row)), row)
        return index

    def _compact(self) -> None:
        data, fresh = self.data, bytearray()
        for row, at in enumerate(self.rows):
            if at >= 0:
                self.rows[row] = len(fresh)
                fresh += data[at:at + self._size(at)]
        self.data, self.dead = fresh, 0


class MessageTable(MutableMapping[tuple[str, str], Message]):
    """`(mailbox, message id) -> Message`, stored packed, one `_Box` per mailbox."""

    __slots__ = ("_boxes", "_count", "_last")

    def __init__(self) -> None:
        self._boxes: dict[str, _Box] = {}
        self._count = 0
        self._last: tuple[str, str, int] = ("", "", -1)  # the row written last (index_rfc)

    def __getitem__(self, key: tuple[str, str]) -> Message:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: tuple[str, str], default: Message | None = None  # type: ignore[override]
            ) -> Message | None:
        box = self._boxes.get(key[0])
        row = -1 if box is None else box.find(key[1].encode("utf-8", "surrogatepass"))
        if row < 0:
            return default
        assert box is not None
        return unpack(key[1], box.record(row)[1])

    def __setitem__(self, key: tuple[str, str], message: Message) -> None:
        mailbox, message_id = key
        if message.id != message_id:
            raise ValueError(f"message {message.id!r} stored under id {message_id!r}")
        box = self._boxes.get(mailbox)
        if box is None:
            box = self._boxes[sys.intern(mailbox)] = _Box()
        row, new = box.put(message_id.encode("utf-8", "surrogatepass"), pack(message))
        self._last = (mailbox, message_id, row)
        if new:
            self._count += 1

    def __delitem__(self, key: tuple[str, str]) -> None:
        box = self._boxes.get(key[0])
        row = -1 if box is None else box.find(key[1].encode("utf-8", "surrogatepass"))
        if row < 0:
            raise KeyError(key)
        assert box is not None
        box.remove(row)
        self._count -= 1

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[1], str):
            return False
        box = self._boxes.get(key[0])
        return box is not None and box.find(key[1].encode("utf-8", "surrogatepass")) >= 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for mailbox, box in self._boxes.items():
            for row in range(len(box.rows)):
                if box.rows[row] >= 0:
                    yield mailbox, box.record(row)[0]

    def __len__(self) -> int:
        return self._count

    def index_rfc(self, mailbox: str, rfc: str, message_id: str) -> None:
        """Index the stored message `message_id` under its RFC Message-ID `rfc` (S13), unless
        another message of the mailbox is indexed under it already."""
        box = self._boxes[mailbox]
        last_mailbox, last_id, row = self._last
        if last_mailbox != mailbox or last_id != message_id:
            row = box.find(message_id.encode("utf-8", "surrogatepass"))
        box.index_rfc(rfc, row)

    def rfc_thread(self, mailbox: str, rfc: str) -> str | None:
        """The thread of the first message indexed under `rfc` in the mailbox, if any."""
        box = self._boxes.get(mailbox)
        row = -1 if box is None else box.rfc_row(rfc)
        if row < 0:
            return None
        assert box is not None
        message_id, packed = box.record(row)
        return unpack(message_id, packed).thread

    def __repr__(self) -> str:
        return f"MessageTable({self._count} messages)"


class RfcIndex:
    """`(mailbox, RFC Message-ID) -> thread` of the messages indexed in a table (S13), read as
    the dict it replaced (`get`, `in`)."""

    __slots__ = ("table",)

    def __init__(self, table: MessageTable) -> None:
        self.table = table

    def get(self, key: tuple[str, str], default: str | None = None) -> str | None:
        found = self.table.rfc_thread(*key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) \
            and isinstance(key[1], str) and self.table.rfc_thread(key[0], key[1]) is not None
