"""Paged reads of one tenant's stream that may skip events before decoding them.

The auditor queries (access, access history) fold one tenant's stream for one thread and need
only a fraction of its events; decoding is most of a read's cost, so a `keep(event class, stored
bytes)` filter looks at the stored JSON first (only where the mapper stores plain JSON: with a
cipher or compressor every event is decoded and the caller filters after decoding). Export reads
every event the same way, a page at a time (constant memory). On PostgreSQL the server leaves
out what the prefilter rejects (scan_postgres; the only part here that needs psycopg), and
`scan_selected` reads only one thread's events and the tenant-wide ones through two indexes
instead of scanning the stream (see docs/decisions/audit-and-erasure.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from eventsourcing.persistence import PersistenceError, StoredEvent

from adapters.errors import StoreError
from adapters.eventstore.store import EventEnvelope, EventStore, _event_class, stream_id
from domain.events import DomainEvent

Keep = Callable[[type[DomainEvent], bytes], bool]
PAGE = 5000


@dataclass(frozen=True)
class Prefilter:
    """What the database may leave out before sending: events of the `drop` classes, and
    events of the `unless` classes whose stored bytes do not contain `needle`. A subset of what
    the caller's `keep` rejects (PostgreSQL only; elsewhere `keep` alone filters)."""

    drop: frozenset[type[DomainEvent]]
    unless: frozenset[type[DomainEvent]]
    needle: bytes


@dataclass(frozen=True)
class Selection:
    """The events one thread's fold needs, for a store that can select them by index: every
    event of the `whole` classes, those of the `by_mailbox` classes whose stored bytes contain
    `needle`, and those of the `by_thread` classes whose `thread` field is `thread`."""

    whole: frozenset[type[DomainEvent]]
    by_mailbox: frozenset[type[DomainEvent]]
    needle: bytes
    by_thread: frozenset[type[DomainEvent]]
    thread: str


class Stored:
    """One selected event before decoding: its class and, for plain JSON, its stored bytes
    (`state`; `payload()` parses them without building the event); `event()` decodes it."""

    __slots__ = ("_event", "_mapper", "_stream", "_topic", "kind", "seq", "state")

    def __init__(self, seq: int, kind: type[DomainEvent], state: bytes | None, mapper: Any,
                 stream: Any = None, topic: str = "", event: DomainEvent | None = None) -> None:
        self.seq, self.kind, self.state = seq, kind, state
        self._mapper, self._stream, self._topic, self._event = mapper, stream, topic, event

    def payload(self) -> dict[str, Any]:
        """The event's fields as stored (sealed content opened, by decoding, when sealed)."""
        if self.state is not None and b'"_sealed"' not in self.state:
            return cast(dict[str, Any], orjson.loads(self.state))
        return self.event().model_dump(mode="json")

    def event(self) -> DomainEvent:
        if self._event is None:
            assert self.state is not None
            item = StoredEvent(originator_id=self._stream, originator_version=self.seq,
                               topic=self._topic, state=self.state)
            self._event = cast(EventEnvelope, self._mapper.to_domain_event(item)).event
        return self._event


def read_selected(store: EventStore, tenant: str, keep: Keep, selection: Selection | None
                  ) -> Iterator[Stored]:
    """The tenant's events that `keep` keeps, in order, not yet decoded: on PostgreSQL (plain
    JSON) read by index as `selection` says (a superset of what `keep` keeps, filtered by it),
    elsewhere by `scan_tenant` with `keep` (then already decoded)."""
    mapper = store.app.mapper
    if selection is not None and not (mapper.cipher or mapper.compressor) \
            and store.env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
        from adapters.eventstore.scan_postgres import indexable, select_by_index

        if indexable(selection.thread):
            stream = stream_id(tenant)
            store.keys.expire()  # the first content opened asks for destroyed keys (L2)
            try:
                for seq, topic, state in select_by_index(store.app.recorder, stream, selection,
                                                         PAGE):
                    kind = _event_class(topic)
                    if keep(kind, state):
                        yield Stored(seq, kind, state, mapper, stream, topic)
            except PersistenceError as exc:
                raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
            return
    for seq, event in scan_tenant(store, tenant, keep):
        yield Stored(seq, type(event), None, mapper, event=event)


def scan_selected(store: EventStore, tenant: str, keep: Keep, selection: Selection | None
                  ) -> Iterator[tuple[int, DomainEvent]]:
    """(seq, event) of what `read_selected` reads, decoded."""
    for item in read_selected(store, tenant, keep, selection):
        yield item.seq, item.event()


def _select(store: EventStore, stream: Any, after: int, page: int,
            pre: Prefilter | None) -> Sequence[StoredEvent]:
    recorder = store.app.recorder
    if pre is not None and store.env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
        from adapters.eventstore.scan_postgres import select_prefiltered

        return select_prefiltered(recorder, stream, after, page, pre)
    return recorder.select_events(stream, gt=after or None, limit=page)


def scan_tenant(store: EventStore, tenant: str, keep: Keep | None = None, *, after: int = 0,
                page: int = PAGE, prefilter: Prefilter | None = None
                ) -> Iterator[tuple[int, DomainEvent]]:
    """(seq, event) of the tenant's stream after `after`, in order; with `keep` (and its
    `prefilter`), events it rejects from their stored form may be left out (never more than it
    rejects)."""
    mapper = store.app.mapper
    filtering = keep is not None and not (mapper.cipher or mapper.compressor)
    pre = prefilter if filtering else None
    stream = stream_id(tenant)
    while True:
        store.keys.expire()  # the first content opened asks for destroyed keys (L2)
        try:
            stored = _select(store, stream, after, page, pre)
        except PersistenceError as exc:
            raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
        for item in stored:
            if filtering:
                assert keep is not None
                if not keep(_event_class(item.topic), item.state):
                    continue
            envelope = cast(EventEnvelope, mapper.to_domain_event(item))
            yield envelope.originator_version, envelope.event
        if len(stored) < page:
            return
        after = stored[-1].originator_version


def tenant_exists(store: EventStore, tenant: str) -> bool:
    try:
        return bool(store.app.recorder.select_events(stream_id(tenant), limit=1))
    except PersistenceError as exc:
        raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
