"""The hash chain of every tenant's stream (E7): each stored event's link, and the check that
recomputes every link from the stored bytes.

`_chain` is the first field of an event's stored JSON: H(previous link || topic || version || the
rest of the stored JSON), hex SHA-256, per tenant stream; the previous link of seq 1 is zeros
(`GENESIS`). It covers the stored bytes, ciphertext included, so destroying a content key (L2)
does not break it. An event written before the chain existed is pinned by a hash of its bytes
(`link_of`). The mapper writes the links (adapters.eventstore.mapper); `verify_chain` reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import ApplicationRecorder, Mapper, PersistenceError, StoredEvent

from adapters.errors import StoreError

GENESIS = "0" * 64
CHAIN_HEAD = b'{"_chain":"'
CHAIN_END = len(CHAIN_HEAD) + 64


def chain_link(prev: str, topic: str, version: int, body: bytes) -> str:
    """E7: the link of one stored event (`body`: its JSON without the `_chain` field)."""
    digest = hashlib.sha256(prev.encode())
    digest.update(b"\0" + topic.encode() + b"\0" + str(version).encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def split_chain(state: bytes) -> tuple[str | None, bytes]:
    """(the stored link, the JSON it covers); (None, state) for an event stored without one."""
    if state.startswith(CHAIN_HEAD) and state[CHAIN_END:CHAIN_END + 2] == b'",':
        return state[len(CHAIN_HEAD):CHAIN_END].decode(), b"{" + state[CHAIN_END + 2:]
    return None, state


def link_of(stored: StoredEvent) -> str:
    """What the next event of the stream chains to: this one's link; for an event written
    before the chain existed, a hash of its stored bytes (so it is pinned all the same)."""
    link, _ = split_chain(stored.state)
    if link is not None:
        return link
    return chain_link("legacy", stored.topic, stored.originator_version, stored.state)


def unwrap(mapper: Mapper[Any], stored: StoredEvent) -> StoredEvent:
    """The stored event with the library's cipher and compressor undone (when configured)."""
    if not (mapper.cipher or mapper.compressor):
        return stored
    state = stored.state
    if mapper.cipher:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor:
        state = mapper.compressor.decompress(state)
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)


@dataclass
class LogCheck:
    """The result of `verify_log`: events read, the first failure (None: the chain holds) and
    each tenant's last (seq, link), which an operator may keep elsewhere to detect truncation."""

    events: int = 0
    unchained: int = 0
    failure: str | None = None
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    chained: dict[UUID, bool] = field(default_factory=dict)


def verify_chain(stored_events: Iterable[tuple[int | str, StoredEvent]], mapper: Mapper[Any]
                 ) -> LogCheck:
    """Recompute the chain of every stream in `stored_events` (in log order); stops at the
    first event that fails: a changed byte, a missing or reordered seq."""
    check = LogCheck()
    heads: dict[UUID, tuple[int, str]] = {}
    names: dict[UUID, str] = {}
    for position, recorded in stored_events:
        check.events += 1
        stream = recorded.originator_id
        stream = stream if isinstance(stream, UUID) else UUID(str(stream))
        seq, prev = heads.get(stream, (0, GENESIS))
        stored = unwrap(mapper, recorded)
        link, body = split_chain(stored.state)
        problem = None
        if stored.originator_version != seq + 1:
            problem = f"seq {stored.originator_version} follows seq {seq}"
        elif link is None:
            if check.chained.get(stream):
                problem = "event has no chain link"
            check.unchained += 1
        elif link != chain_link(prev, stored.topic, stored.originator_version, body):
            problem = "stored bytes do not match their chain link"
        if problem is not None:
            check.failure = (f"position {position} (tenant {_tenant_of(body, stream)}, "
                             f"seq {stored.originator_version}): {problem}")
            return check
        if link is not None:
            check.chained[stream] = True
        if stream not in names:
            names[stream] = _tenant_of(body, stream)
        heads[stream] = (stored.originator_version, link_of(stored))
    check.heads = {names[k]: v for k, v in heads.items()}
    return check


def stored_events(recorder: ApplicationRecorder, stream: UUID | None, page: int
                  ) -> Iterator[tuple[int | str, StoredEvent]]:
    """The stored events of one stream (positions named `seq N`), or of the whole log in
    recording order (positions as numbers), read `page` at a time."""
    try:
        if stream is not None:
            after = 0
            while True:
                found = recorder.select_events(stream, gt=after or None, limit=page)
                for stored in found:
                    yield f"seq {stored.originator_version}", stored
                if len(found) < page:
                    return
                after = found[-1].originator_version
        position = 0
        while True:
            notes = recorder.select_notifications(start=position, limit=page,
                                                  inclusive_of_start=False)
            for n in notes:
                yield n.id, n
            if len(notes) < page:
                return
            position = notes[-1].id
    except PersistenceError as exc:
        raise StoreError(f"cannot read the event log: {exc}") from exc


def _tenant_of(body: bytes, stream: UUID) -> str:
    try:
        tenant = orjson.loads(body).get("tenant")
    except (orjson.JSONDecodeError, AttributeError):
        tenant = None
    return tenant if isinstance(tenant, str) else str(stream)
