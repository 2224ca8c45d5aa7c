"""The messages of a tenant, each packed into a few dozen bytes (pure, no I/O; issue #15).

A tenant holds every message in memory: as Python objects (a dataclass, its strings, a tuple
key) one costs about 600 bytes. `MessageTable` is a mapping `(mailbox, provider message id) ->
Message` that packs on write and unpacks on read: a `Message` read from it is a frozen copy, so
a change is written back with `table[key] = dataclasses.replace(msg, ...)` and a forgotten
write-back fails loudly.

A packed message (`Codec`) holds numbers instead of repeated text: its thread's number (the
tenant's thread ids, `TextRows`), its participants', label set's and delivery status's numbers
(`Names`), its RFC Message-ID as the text before the last `@` and the number of the rest (the
domain half repeats), its UTC time as the 14 digits of `YYYYMMDDhhmmss` in 6 bytes. Every text
comes back exactly as written (a time that is not such UTC ISO text is kept as text).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from zlib import crc32

from domain.packing import (
    Names,
    Records,
    SlotIndex,
    TextRows,
    crc,
    read_varint,
    text_bytes,
    text_of,
    varint,
)

_READ, _DELETED, _RFC, _STATUS, _TIME, _FRACTION = 1, 2, 4, 8, 16, 32
_SHORT = [bytes((n,)) for n in range(0x80)]  # one-byte varints, without a call each


def _compact_time(iso: str) -> tuple[int, str] | None:
    """`2025-01-01T00:00:01.25+00:00` -> (20250101000001, ".25"), by slicing (no date
    arithmetic: this runs for every message folded); None for any other text."""
    if len(iso) < 25 or not iso.endswith("+00:00") or iso[4] != "-" or iso[7] != "-" \
            or iso[10] != "T" or iso[13] != ":" or iso[16] != ":":
        return None
    digits = iso[0:4] + iso[5:7] + iso[8:10] + iso[11:13] + iso[14:16] + iso[17:19]
    fraction = iso[19:-6]
    if not (digits.isascii() and digits.isdigit()) or (fraction and not (
            fraction[0] == "." and fraction[1:].isascii() and fraction[1:].isdigit())):
        return None
    return int(digits), fraction


def _full_time(digits: int, fraction: str) -> str:
    t = f"{digits:014d}"
    return f"{t[0:4]}-{t[4:6]}-{t[6:8]}T{t[8:10]}:{t[10:12]}:{t[12:14]}{fraction}+00:00"


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


class Codec:
    """Packs a message into bytes and back, numbering what repeats in the tenant's tables (the
    numbers are given in fold order, so a refold packs alike)."""

    __slots__ = ("label_sets", "names", "thread_ids")

    def __init__(self) -> None:
        self.names: Names[str] = Names()  # addresses, mailboxes, statuses, Message-ID domains
        self.label_sets: Names[tuple[str, ...]] = Names()
        self.thread_ids = TextRows()

    def pack(self, m: Message) -> bytes:
        """The message without its id (the table keeps the id in front)."""
        out = bytearray()
        self.pack_into(out, self.thread_ids.number(m.thread), m.rfc_id, m.participants,
                       m.subject, m.sent_at, m.labels, m.read, m.delivery_status, m.deleted)
        return bytes(out)

    def pack_into(self, out: bytearray, thread: int, rfc_id: str | None,
                  participants: tuple[str, ...], subject: str, sent_at: str,
                  labels: tuple[str, ...], read: bool, delivery_status: str | None,
                  deleted: bool) -> None:
        """Append `pack` of a message given by its fields and its thread's number to `out`
        (the fold packs straight into the record it stores, without making a Message). A
        name's code is read from `Names.codes` first: a call of `Names.code` only for a new
        one (this runs for every message folded)."""
        codes, code, short = self.names.codes, self.names.code, _SHORT
        time = _compact_time(sent_at)
        out.append((_READ if read else 0) | (_DELETED if deleted else 0) | (
            0 if rfc_id is None else _RFC) | (0 if delivery_status is None else _STATUS) | (
            0 if time is None else _TIME | (_FRACTION if time[1] else 0)))
        out += short[thread] if thread < 0x80 else varint(thread)
        if rfc_id is not None:
            cut = rfc_id.rfind("@")
            local = (rfc_id[:cut] if cut >= 0 else rfc_id).encode("utf-8", "surrogatepass")
            n = len(local)
            out += short[n] if n < 0x80 else varint(n)
            out += local
            domain = rfc_id[cut:] if cut >= 0 else ""
            out += codes.get(domain) or code(domain)
        n = len(participants)
        out += short[n] if n < 0x80 else varint(n)
        for a in participants:
            out += codes.get(a) or code(a)
        subject_bytes = subject.encode("utf-8", "surrogatepass")  # text_bytes, without a call
        n = len(subject_bytes)
        out += short[n] if n < 0x80 else varint(n)
        out += subject_bytes
        if time is None:  # not UTC ISO text, or none (a state without message content)
            sent = sent_at.encode("utf-8", "surrogatepass")
            n = len(sent)
            out += short[n] if n < 0x80 else varint(n)
            out += sent
        else:
            out += time[0].to_bytes(6, "little")
            if time[1]:
                n = len(time[1])
                out += short[n] if n < 0x80 else varint(n)
                out += time[1].encode()
        out += self.label_sets.codes.get(labels) or self.label_sets.code(labels)
        if delivery_status is not None:
            out += codes.get(delivery_status) or code(delivery_status)

    def unpack(self, message_id: str, data: bytes | bytearray, at: int = 0) -> Message:
        """The message packed at `at` in `data`. (Numbers below 128 are read inline, not by a
        call each: projections unpack every message several times.)"""
        names = self.names.values
        flags = data[at]
        thread, at = read_varint(data, at + 1)
        rfc = None
        if flags & _RFC:
            n = data[at]
            if n < 0x80:
                at += 1
            else:
                n, at = read_varint(data, at)
            local = text_of(data[at:at + n])
            domain, at = read_varint(data, at + n)
            rfc = local + names[domain]
        count = data[at]  # at most a few dozen participants: one byte
        at += 1
        if count >= 0x80:
            count, at = read_varint(data, at - 1)
        people = []
        for _ in range(count):
            a = data[at]
            if a < 0x80:
                at += 1
            else:
                a, at = read_varint(data, at)
            people.append(names[a])
        n = data[at]
        if n < 0x80:
            at += 1
        else:
            n, at = read_varint(data, at)
        subject = text_of(data[at:at + n])
        at += n
        if flags & _TIME:
            digits = int.from_bytes(data[at:at + 6], "little")
            at += 6
            fraction = ""
            if flags & _FRACTION:
                n, at = read_varint(data, at)
                fraction = data[at:at + n].decode()
                at += n
            sent = _full_time(digits, fraction)
        else:
            n, at = read_varint(data, at)
            sent = text_of(data[at:at + n])
            at += n
        labels = data[at]
        if labels < 0x80:
            at += 1
        else:
            labels, at = read_varint(data, at)
        status = names[read_varint(data, at)[0]] if flags & _STATUS else None
        return Message(message_id, self.thread_ids.text(thread), rfc, tuple(people), subject,
                       sent, self.label_sets.values[labels], bool(flags & _READ), status,
                       bool(flags & _DELETED))

    def rfc(self, data: bytes | bytearray, at: int) -> bytes:
        """The RFC Message-ID (UTF-8, b"" for none) of the message packed at `at`, without
        unpacking the rest."""
        flags = data[at]
        if not flags & _RFC:
            return b""
        at = read_varint(data, at + 1)[1]
        n, at = read_varint(data, at)
        return bytes(data[at:at + n]) + text_bytes(self.names.values[read_varint(data, at + n)[0]])

    def thread(self, data: bytes | bytearray, at: int) -> int:
        """The thread number of the message packed at `at`."""
        return read_varint(data, at + 1)[0]


class Box:
    """One mailbox's messages with no Python object per message: each row's record is the id
    (UTF-8, after its length) then the packed message; indexes of rows by a CRC-32 of the id and
    of the RFC Message-ID (S13 on the command side: the first row with each, kept when asked).
    `prev[row]` chains a thread's rows (-2: in no chain, -1: the first of its thread)."""

    __slots__ = ("codec", "ids", "prev", "records", "rfcs")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.records = Records()
        self.ids = SlotIndex()  # removed rows keep their slots: probes go past them
        self.rfcs = SlotIndex()
        self.prev = array("i")

    def message_at(self, row: int) -> tuple[bytearray, int]:
        """A copy of the row's record, and where its packed message starts in it."""
        start, end = self.records.body(row)
        data = self.records.data[start:end]
        n, at = read_varint(data, 0)
        return data, at + n

    def id(self, row: int) -> str:
        return text_of(self._id(row))

    def _id(self, row: int) -> bytes:
        data = self.records.data
        n, at = read_varint(data, self.records.body(row)[0])
        return bytes(data[at:at + n])

    def find(self, key: bytes, key_crc: int | None = None) -> int:
        """The row of the message with this (UTF-8) id; -1 if none."""
        return self.ids.find(crc(key) if key_crc is None else key_crc,
                             lambda row: self.records.at[row] >= 0 and self._id(row) == key)

    def put(self, key: bytes, record: bytes | bytearray, prev: int = -2) -> tuple[int, bool]:
        """Store the record (`key`'s length and `key`, then the packed message) of the message
        with this (UTF-8) id: its row, and True when the message is new; a new row is chained
        after `prev` (-2: in no chain). One probe finds the id or the slot it takes."""
        key_crc = crc32(key)  # `crc`, without a call (the fold stores every message here)
        records, ids = self.records, self.ids
        row = ids.probe(key_crc, lambda r: records.at[r] >= 0 and self._id(r) == key)
        if row >= 0:
            records.put(row, record)
            return row, False
        slot = ~row
        if (ids.used + 1) * 3 > len(ids.slots) * 2:  # `ids.full()`
            self.ids = ids.grown(self._live(ids), self._id)
            slot = -1  # the probe was of the smaller index
        row = records.append(record)
        self.prev.append(prev)
        if slot < 0:
            self.ids.add(key_crc, row)
        else:
            self.ids.put(slot, key_crc, row)
        return row, True

    def rfc_row(self, rfc: str) -> int:
        """The first row indexed under this RFC Message-ID; -1 if none."""
        key = text_bytes(rfc)
        return self.rfcs.find(crc(key), lambda row: self.records.at[row] >= 0
                              and self._rfc(row) == key)

    def index_rfc(self, rfc: str, row: int) -> None:
        """Index `row` under `rfc` unless a row is indexed under it already (first come wins)."""
        rfcs = self.rfcs
        if (rfcs.used + 1) * 3 > len(rfcs.slots) * 2:  # `rfcs.full()`, without a call
            rfcs = self.rfcs = rfcs.grown(self._live(rfcs), self._rfc)
        key = rfc.encode("utf-8", "surrogatepass")
        key_crc = crc32(key)
        found = rfcs.probe(key_crc, lambda r: self.records.at[r] >= 0 and self._rfc(r) == key)
        if found < 0:
            rfcs.put(~found, key_crc, row)

    def _rfc(self, row: int) -> bytes:
        return self.codec.rfc(*self.message_at(row))

    def _live(self, index: SlotIndex) -> list[int]:
        return [r for r in index.rows() if self.records.at[r] >= 0]

    def chain(self, last: int) -> list[int]:
        """A thread's rows, first to last, from its last row."""
        rows: list[int] = []
        while last >= 0:
            rows.append(last)
            last = self.prev[last]
        rows.reverse()
        return rows

    def message(self, row: int) -> Message:
        """The message of a row (its id read from the record: no lookup by id)."""
        start, end = self.records.body(row)
        data = self.records.data[start:end]
        n, at = read_varint(data, 0)
        return self.codec.unpack(text_of(data[at:at + n]), data, at + n)


class MessageTable(MutableMapping[tuple[str, str], Message]):
    """`(mailbox, message id) -> Message`, stored packed, one `Box` per mailbox."""

    __slots__ = ("_boxes", "_count", "_last", "codec")

    def __init__(self) -> None:
        self.codec = Codec()
        self._boxes: dict[str, Box] = {}
        self._count = 0
        self._last: tuple[str, str, int] = ("", "", -1)  # the row written last (index_rfc)

    def box(self, mailbox: str) -> Box | None:
        return self._boxes.get(mailbox)

    def __getitem__(self, key: tuple[str, str]) -> Message:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: tuple[str, str], default: Message | None = None  # type: ignore[override]
            ) -> Message | None:
        box = self._boxes.get(key[0])
        row = -1 if box is None else box.find(text_bytes(key[1]))
        if row < 0:
            return default
        assert box is not None
        data, at = box.message_at(row)
        return self.codec.unpack(key[1], data, at)

    def __setitem__(self, key: tuple[str, str], message: Message) -> None:
        mailbox, message_id = key
        if message.id != message_id:
            raise ValueError(f"message {message.id!r} stored under id {message_id!r}")
        self._store(mailbox, message_id, self.codec.pack(message))

    def put(self, mailbox: str, message_id: str, thread: str, rfc_id: str | None,
            participants: tuple[str, ...], subject: str, sent_at: str,
            labels: tuple[str, ...], read: bool, delivery_status: str | None) -> None:
        """`self[mailbox, message_id] = Message(message_id, thread, ...)` (not deleted),
        without making the Message."""
        self.add(mailbox, message_id, self.codec.thread_ids.number(thread), rfc_id,
                 participants, subject, sent_at, labels, read, delivery_status)

    def add(self, mailbox: str, message_id: str, thread: int, rfc_id: str | None,
            participants: tuple[str, ...], subject: str, sent_at: str,
            labels: tuple[str, ...], read: bool, delivery_status: str | None,
            prev: int = -2, index_rfc: bool = False) -> int:
        """`put` of a message given its thread's number (the fold of a synced message): packed
        straight into its record. A new message's row is chained after `prev` (-2: in no
        chain); with `index_rfc`, the message is indexed under its RFC Message-ID as
        `index_rfc` does. Its row if the message is new; -1 if it was stored already (its
        record is rewritten; it stays chained as it was)."""
        box = self._boxes.get(mailbox)
        if box is None:
            box = self._boxes[sys.intern(mailbox)] = Box(self.codec)
        key = message_id.encode("utf-8", "surrogatepass")  # text_bytes, without a call
        n = len(key)
        record = bytearray(_SHORT[n] if n < 0x80 else varint(n))
        record += key
        self.codec.pack_into(record, thread, rfc_id, participants, subject, sent_at, labels,
                             read, delivery_status, False)
        row, new = box.put(key, record, prev)
        self._last = (mailbox, message_id, row)
        if new:
            self._count += 1
        if index_rfc and rfc_id:
            box.index_rfc(rfc_id, row)
        return row if new else -1

    def _store(self, mailbox: str, message_id: str, packed: bytes) -> None:
        box = self._boxes.get(mailbox)
        if box is None:
            box = self._boxes[sys.intern(mailbox)] = Box(self.codec)
        key = text_bytes(message_id)
        row, new = box.put(key, varint(len(key)) + key + packed)
        self._last = (mailbox, message_id, row)
        if new:
            self._count += 1

    def __delitem__(self, key: tuple[str, str]) -> None:
        box = self._boxes.get(key[0])
        row = -1 if box is None else box.find(text_bytes(key[1]))
        if row < 0:
            raise KeyError(key)
        assert box is not None
        if box.prev[row] != -2:  # a thread lists it: the fold marks it deleted instead
            raise ValueError(f"message {key!r} belongs to a thread")
        box.records.remove(row)
        self._count -= 1
        self._last = ("", "", -1)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[1], str):
            return False
        box = self._boxes.get(key[0])
        return box is not None and box.find(text_bytes(key[1])) >= 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for mailbox, box in self._boxes.items():
            for row in range(len(box.records.at)):
                if box.records.at[row] >= 0:
                    yield mailbox, box.id(row)

    def __len__(self) -> int:
        return self._count

    def row(self, mailbox: str, message_id: str) -> int:
        """The message's row in its mailbox's box; -1 if none."""
        last_mailbox, last_id, row = self._last
        if last_mailbox == mailbox and last_id == message_id:
            return row
        box = self._boxes.get(mailbox)
        return -1 if box is None else box.find(text_bytes(message_id))

    def index_rfc(self, mailbox: str, rfc: str, message_id: str) -> None:
        """Index the stored message `message_id` under its RFC Message-ID `rfc` (S13), unless
        another message of the mailbox is indexed under it already."""
        self._boxes[mailbox].index_rfc(rfc, self.row(mailbox, message_id))

    def has_rfc(self, mailbox: str, rfc: str) -> bool:
        """Whether a message of the mailbox is indexed under `rfc` (`rfc_thread` is not None)."""
        box = self._boxes.get(mailbox)
        return box is not None and box.rfc_row(rfc) >= 0

    def rfc_thread(self, mailbox: str, rfc: str) -> str | None:
        """The thread of the first message indexed under `rfc` in the mailbox, if any."""
        box = self._boxes.get(mailbox)
        row = -1 if box is None else box.rfc_row(rfc)
        if row < 0:
            return None
        assert box is not None
        return self.codec.thread_ids.text(self.codec.thread(*box.message_at(row)))

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
