"""Building blocks of the tenant state's packed tables (issue #15; pure, no I/O).

A tenant holds hundreds of thousands of messages and threads; as Python objects each costs
hundreds of bytes. These hold them as bytes instead:

- `Names`: a per-tenant table of small repeated values (addresses, mailbox ids, label sets,
  delivery statuses, the domain half of Message-IDs) and their numbers, so a record holds a
  number of one or two bytes instead of the text;
- `Records`: variable-length records appended to one bytearray, an `array` of offsets by row;
  a rewrite appends and the old records are compacted away when they outweigh the live ones;
- `SlotIndex`: an open-addressing index of rows by the CRC-32 of a key, 4 bytes a slot;
- `TextRows`: texts numbered in order of arrival (thread ids), found by text through an index;
- varints (LEB128): most numbers in a record take one to three bytes.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x200000:  # two or three bytes (a tenant's thread numbers, records' lengths): no loop
        if n < 0x4000:
            return bytes((n & 0x7F | 0x80, n >> 7))
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """The number at `at`, and the position after it."""
    b = data[at]
    if b < 0x80:
        return b, at + 1
    n, shift = b & 0x7F, 7
    while True:
        at += 1
        b = data[at]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, at + 1
        shift += 7


def text_bytes(text: str) -> bytes:
    """UTF-8, lone surrogates kept (a provider's id is whatever text it sent)."""
    return text.encode("utf-8", "surrogatepass")


def text_of(data: bytes | bytearray) -> str:
    return data.decode("utf-8", "surrogatepass")


class Names(Generic[T]):
    """Values numbered in order of first use; the numbers are never reused (a fold gives the same
    numbers on replay, so a snapshot and a refold agree)."""

    __slots__ = ("codes", "numbers", "values")

    def __init__(self) -> None:
        self.values: list[T] = []
        self.numbers: dict[T, int] = {}
        self.codes: dict[T, bytes] = {}  # the number as a varint (packing reads this)

    def number(self, value: T) -> int:
        found = self.numbers.get(value)
        if found is None:
            found = self.numbers[value] = len(self.values)
            self.codes[value] = varint(found)
            self.values.append(value)
        return found

    def code(self, value: T) -> bytes:
        """The value's number as a varint."""
        found = self.codes.get(value)
        if found is None:
            self.number(value)
            found = self.codes[value]
        return found

    def __len__(self) -> int:
        return len(self.values)


def crc(key: bytes) -> int:
    return zlib.crc32(key)


ROW_BITS = 26  # a slot: the top 6 bits of the key's CRC-32 (most probes stop there), row + 1
_ROW_MASK = (1 << ROW_BITS) - 1
MAX_ROWS = _ROW_MASK - 1


class SlotIndex:
    """Rows by the CRC-32 of a key, 4 bytes a slot, at most two thirds full. The caller checks a
    candidate row's key (`match`). The CRC is stable across processes: a pickled index is
    valid as it is."""

    __slots__ = ("slots", "used")

    def __init__(self, size: int = 8) -> None:
        self.slots = array("I", bytes(4 * size))
        self.used = 0

    def find(self, key_crc: int, match: Callable[[int], bool]) -> int:
        """The matching row; -1 if none."""
        found = self.probe(key_crc, match)
        return found if found >= 0 else -1

    def probe(self, key_crc: int, match: Callable[[int], bool]) -> int:
        """The matching row (>= 0); else `~slot`, the empty slot the probe stopped at, where
        `put` adds the key (one probe where `find` then `add` took two)."""
        slots, mask, tag = self.slots, len(self.slots) - 1, key_crc >> ROW_BITS
        at = key_crc & mask
        while (taken := slots[at]) != 0:
            if taken >> ROW_BITS == tag and match((taken & _ROW_MASK) - 1):
                return (taken & _ROW_MASK) - 1
            at = (at + 1) & mask
        return ~at

    def put(self, slot: int, key_crc: int, row: int) -> None:
        """Add `row` at the empty slot `probe` stopped at (the slot `add` would take)."""
        if row >= MAX_ROWS:
            raise ValueError(f"more than {MAX_ROWS} rows in one table")
        self.slots[slot] = (key_crc >> ROW_BITS) << ROW_BITS | (row + 1)
        self.used += 1

    def add(self, key_crc: int, row: int) -> None:
        if row >= MAX_ROWS:
            raise ValueError(f"more than {MAX_ROWS} rows in one table")
        slots, mask = self.slots, len(self.slots) - 1
        at = key_crc & mask
        while slots[at] != 0:
            at = (at + 1) & mask
        slots[at] = (key_crc >> ROW_BITS) << ROW_BITS | (row + 1)
        self.used += 1

    def full(self) -> bool:
        return (self.used + 1) * 3 > len(self.slots) * 2

    def rows(self) -> list[int]:
        return [(s & _ROW_MASK) - 1 for s in self.slots if s != 0]

    def grown(self, rows: list[int], key_of: Callable[[int], bytes]) -> SlotIndex:
        """A larger index of `rows` (at most a third full)."""
        size = len(self.slots)
        while (len(rows) + 1) * 3 > size:
            size *= 2
        index = SlotIndex(size)
        for row in rows:
            index.add(crc(key_of(row)), row)
        return index


class Records:
    """Rows of bytes: each a varint length and the bytes, appended to `data`; `at[row]` is the
    offset of the row's latest record (-1: none). Offsets are 4 bytes until the data outgrows
    them."""

    __slots__ = ("at", "data", "dead")

    def __init__(self) -> None:
        self.data = bytearray()
        self.at = array("i")
        self.dead = 0  # bytes of records no row points at any more

    def body(self, row: int) -> tuple[int, int]:
        """(start, end) of the row's bytes in `data`."""
        length, start = read_varint(self.data, self.at[row])
        return start, start + length

    def get(self, row: int) -> bytes:
        start, end = self.body(row)
        return bytes(self.data[start:end])

    def append(self, blob: bytes | bytearray) -> int:
        """A new row holding `blob` (`_write` inlined: the fold appends a record a message)."""
        at, data, n = self.at, self.data, len(blob)
        row, offset = len(at), len(data)
        if offset > 0x7FFFFFFF and at.typecode == "i":
            at = self.at = array("q", at)
        at.append(offset)
        data += bytes((n,)) if n < 0x80 else varint(n)
        data += blob
        return row

    def put(self, row: int, blob: bytes | bytearray) -> None:
        """Replace the row's bytes (rows up to `row` are made, empty, if need be)."""
        while len(self.at) <= row:
            self.at.append(-1)
        if self.at[row] >= 0:
            self.dead += self._size(row)
        self._write(row, blob)
        if self.dead > 65536 and self.dead > len(self.data) // 2:
            self._compact()

    def remove(self, row: int) -> None:
        self.dead += self._size(row)
        self.at[row] = -1

    def _write(self, row: int, blob: bytes | bytearray) -> None:
        offset = len(self.data)
        if offset > 0x7FFFFFFF and self.at.typecode == "i":
            self.at = array("q", self.at)
        self.at[row] = offset
        self.data += varint(len(blob))
        self.data += blob

    def _size(self, row: int) -> int:
        return self.body(row)[1] - self.at[row]

    def _compact(self) -> None:
        data, fresh = self.data, bytearray()
        for row, at in enumerate(self.at):
            if at >= 0:
                size = self._size(row)
                self.at[row] = len(fresh)
                fresh += data[at:at + size]
        self.data, self.dead = fresh, 0


class TextRows:
    """Texts numbered in order of arrival, never removed (a tenant's thread ids)."""

    __slots__ = ("index", "last", "records")

    def __init__(self) -> None:
        self.records = Records()
        self.index = SlotIndex()
        # the text found last and its number: a fold asks for one thread's number several
        # times in a row (numbers never change, so this is never stale)
        self.last: tuple[str, int] = ("", -1)

    def find(self, text: str) -> int:
        """The number of `text`; -1 if it has none."""
        last = self.last
        if last[0] == text and last[1] >= 0:
            return last[1]
        key = text_bytes(text)
        found = self.index.find(crc(key), lambda row: self.records.get(row) == key)
        if found >= 0:
            self.last = (text, found)
        return found

    def number(self, text: str) -> int:
        """The number of `text`, given one if it has none yet (one probe finds the text or the
        slot it takes: the fold asks this for every new thread)."""
        last = self.last
        if last[0] == text and last[1] >= 0:
            return last[1]
        key = text_bytes(text)
        key_crc = crc(key)
        found = self.index.probe(key_crc, lambda row: self.records.get(row) == key)
        if found >= 0:
            self.last = (text, found)
            return found
        slot = ~found
        if self.index.full():
            self.index = self.index.grown(self.index.rows(), self.records.get)
            slot = -1  # the probe was of the smaller index
        row = self.records.append(key)
        if slot < 0:
            self.index.add(key_crc, row)
        else:
            self.index.put(slot, key_crc, row)
        self.last = (text, row)
        return row

    def text(self, number: int) -> str:
        return text_of(self.records.get(number))

    def __len__(self) -> int:
        return len(self.records.at)
