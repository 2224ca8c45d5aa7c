"""One part of a build partitioned by mailbox (pure): which events it folds, which keys it writes.

A rebuild on several cores runs one builder per part. Every builder folds every tenant-wide
event (users, records, shares, mailboxes themselves) but only its own mailboxes' mail; threads
belong to the mailbox they were created in (thread ids start with it, SPEC S13), so each part
holds complete threads. Each key of a state-derived projection is written by exactly one part:
thread-derived keys by the part that holds the thread, a mailbox's sync status by its part,
the directory and contact merge state by part 0. The union of the parts' rows equals a build
in one process (the E3 tests compare them by checksum).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from domain import events as ev
from domain.state import TenantState

# Events about one mailbox's mail (its messages, their counters and outbound requests): folded
# only by the part that owns the mailbox. The rest is folded by every part.
MAILBOX_MAIL: tuple[type[ev.DomainEvent], ...] = (
    ev.MessageSynced, ev.EmailSent, ev.MessageUpdated, ev.MessageDeletedAtProvider,
    ev.MessageDeletionHeld, ev.MailboxDeletionsConfirmed, ev.MessageSkipped,
    ev.AttachmentRejected, ev.DeliverySkipped, ev.MessageDeletionRequested,
    ev.MessageReadRequested, ev.OutboundMailAcknowledged, ev.OutboundCopyMatched)
_SHARED_KEYS = frozenset({"directory", "contact"})  # written by part 0


_MARKER = b'"mailbox":"'


def _stored_mailbox(data: bytes) -> object:
    """The `mailbox` of a stored MAILBOX_MAIL event's JSON. Its fields before `mailbox` are
    plain strings and times (checked by the tests), whose JSON cannot hold the marker
    unescaped, so the marker's first occurrence is the event's own field: read the bytes up to
    the next quote; an id with a JSON escape in it is read by orjson instead."""
    start = data.find(_MARKER)
    if start >= 0:
        start += len(_MARKER)
        end = data.find(b'"', start)
        raw = data[start:end]
        if end > 0 and b"\\" not in raw:
            return raw.decode()
    return orjson.loads(data).get("mailbox")


@dataclass(frozen=True)
class Partition:
    index: int
    count: int
    # mailbox -> part, where the coordinator balanced them by size (`balanced`); others: hash
    assigned: Mapping[str, int] = field(default_factory=dict, compare=False)
    _owned: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index} of {self.count} does not exist")

    def owns_mailbox(self, mailbox: str) -> bool:
        """As assigned, else by a hash of the mailbox id that spreads similar ids (`mb1`,
        `mb2`) evenly."""
        owned = self._owned.get(mailbox)
        if owned is None:
            part = self.assigned.get(mailbox)
            if part is None:
                digest = hashlib.blake2b(mailbox.encode(), digest_size=8).digest()
                part = int.from_bytes(digest) % self.count
            owned = self._owned[mailbox] = part == self.index
        return owned

    def keeps(self, kind: type[ev.DomainEvent], data: bytes) -> bool:
        """Before decoding a stored event (its class and JSON): False for another part's
        mailbox mail, read by orjson alone, far cheaper than validating the event."""
        if not issubclass(kind, MAILBOX_MAIL):
            return True
        mailbox = _stored_mailbox(data)
        return not isinstance(mailbox, str) or self.owns_mailbox(mailbox)

    def admit(self, state: TenantState, event: ev.DomainEvent) -> ev.DomainEvent | None:
        """The event as this part folds it: None for another part's mail or thread, a thread
        mark narrowed to this part's threads."""
        if isinstance(event, MAILBOX_MAIL):
            mailbox: str = cast(Any, event).mailbox  # every MAILBOX_MAIL event has one
            return event if self.owns_mailbox(mailbox) else None
        if isinstance(event, ev.ThreadLinked | ev.ThreadUnlinked):
            return event if event.thread in state.threads else None
        if isinstance(event, ev.ThreadMarked):
            mine = [t for t in event.threads if t in state.threads]
            if len(mine) == len(event.threads):
                return event
            return event.model_copy(update={"threads": mine}) if mine else None
        return event

    def owns_key(self, projection: str, key: str) -> bool:
        """Keys this part writes (thread-derived keys come only from threads it holds)."""
        if projection in _SHARED_KEYS:
            return self.index == 0
        if projection == "sync_status":
            return self.owns_mailbox(key)
        return True


def balanced(sizes: Mapping[str, int], count: int) -> dict[str, int]:
    """Mailboxes spread over `count` parts so that their sizes (messages) add up about evenly:
    largest first, each to the part with the least so far (ties: the lower part, the name)."""
    loads = [0] * count
    out: dict[str, int] = {}
    for mailbox, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        part = min(range(count), key=lambda i: (loads[i], i))
        out[mailbox] = part
        loads[part] += size
    return out
