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
from collections.abc import Iterator, MutableMapping
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


class MessageTable(MutableMapping[tuple[str, str], Message]):
    """`(mailbox, message id) -> Message`, stored packed, one dict per mailbox."""

    __slots__ = ("_boxes", "_count")

    def __init__(self) -> None:
        self._boxes: dict[str, dict[str, bytes]] = {}
        self._count = 0

    def __getitem__(self, key: tuple[str, str]) -> Message:
        mailbox, message_id = key
        return unpack(message_id, self._boxes[mailbox][message_id])

    def get(self, key: tuple[str, str], default: Message | None = None  # type: ignore[override]
            ) -> Message | None:
        box = self._boxes.get(key[0])
        data = None if box is None else box.get(key[1])
        return default if data is None else unpack(key[1], data)

    def __setitem__(self, key: tuple[str, str], message: Message) -> None:
        mailbox, message_id = key
        if message.id != message_id:
            raise ValueError(f"message {message.id!r} stored under id {message_id!r}")
        box = self._boxes.setdefault(sys.intern(mailbox), {})
        if message_id not in box:
            self._count += 1
        box[message_id] = pack(message)

    def __delitem__(self, key: tuple[str, str]) -> None:
        del self._boxes[key[0]][key[1]]
        self._count -= 1

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        box = self._boxes.get(key[0])
        return box is not None and key[1] in box

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for mailbox, box in self._boxes.items():
            for message_id in box:
                yield mailbox, message_id

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"MessageTable({self._count} messages)"
