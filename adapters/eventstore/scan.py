"""Paged reads of one tenant's stream that may skip events before decoding them.

The auditor queries (access, access history) fold one tenant's stream for one thread and need
only a fraction of its events; decoding is most of a read's cost, so a `keep(event class, stored
bytes)` filter looks at the stored JSON first (only where the mapper stores plain JSON: with a
cipher or compressor every event is decoded and the caller filters after decoding). Export reads
every event the same way, a page at a time (constant memory). On PostgreSQL the server leaves
out what the prefilter rejects (scan_postgres; the only part here that needs psycopg).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

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
