"""Reads of the application log, every tenant in recording order: its end, the log position of
a tenant's event, and pages of events decoded only where a filter keeps them.

The projection runners, the followers (outbox, contact sync) and the waits for the views read
here; the EventStore's methods of the same names call these with its application.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import MapperDeserialisationError, PersistenceError
from eventsourcing.utils import TopicError

from adapters.errors import StoreError
from adapters.eventstore.content_keys import ContentKeys
from adapters.eventstore.mapper import EventEnvelope, event_class
from domain.events import DomainEvent

Keep = Callable[[type[DomainEvent], bytes], bool]


@dataclass(frozen=True)
class LoggedEvent:
    """An event read from the application log: its global position and its tenant sequence."""

    position: int
    seq: int
    event: DomainEvent


def max_position(app: Application[UUID]) -> int:
    """The log position of the last event (0: empty log)."""
    try:
        return app.recorder.max_notification_id() or 0
    except PersistenceError as exc:
        raise StoreError(f"cannot read the event log: {exc}") from exc


def log_position(app: Application[UUID], module: str | None, stream: UUID, seq: int) -> int | None:
    """The log position of event `seq` of `stream` (None: no such event). One indexed lookup on
    the (stream, version) key of whichever recorder holds the log (`module`: the store's
    PERSISTENCE_MODULE)."""
    from eventsourcing.popo import POPOApplicationRecorder

    # each technology's lookup lives with its driver (one driver per module)
    recorder = app.recorder
    try:
        if isinstance(recorder, POPOApplicationRecorder):
            index = recorder._stored_events_index.get(str(stream), {})
            return index[seq] + 1 if seq in index else None
        if module == "eventsourcing.sqlite":
            from adapters.eventstore.recorder_sqlite import log_position as sqlite_position

            return sqlite_position(recorder, stream, seq)
        if module == "eventsourcing.postgres":
            from adapters.eventstore.recorder_postgres import log_position as pg_position

            return pg_position(recorder, stream, seq)
    except PersistenceError as exc:
        raise StoreError(f"cannot read the event log: {exc}") from exc
    raise StoreError(f"no position lookup for {type(recorder).__name__}")


def read_log_kept(app: Application[UUID], keys: ContentKeys, after: int, limit: int,
                  keep: Keep | None) -> tuple[list[LoggedEvent], int]:
    """Events after log position `after`, at most `limit`, in log order, decoding only those
    `keep(event class, stored JSON)` accepts (all of them without `keep`, or when stored events
    are compressed or encrypted); also the last position read (`after` when there was
    nothing)."""
    mapper = app.mapper
    filtering = keep is not None and not (mapper.cipher or mapper.compressor)
    try:
        keys.expire()  # refreshed before the first sealed event of the page is opened
        notifications = app.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False)
        out = []
        for n in notifications:
            if filtering:
                assert keep is not None
                try:
                    wanted = keep(event_class(n.topic), n.state)
                except (orjson.JSONDecodeError, TopicError) as exc:
                    raise MapperDeserialisationError(
                        f"cannot decode event {n.topic} v{n.originator_version}: {exc}"
                    ) from exc
                if not wanted:
                    continue
            envelope = cast(EventEnvelope, mapper.to_domain_event(n))
            out.append(LoggedEvent(n.id, envelope.originator_version, envelope.event))
        return out, notifications[-1].id if notifications else after
    except PersistenceError as exc:
        raise StoreError(f"cannot read the event log: {exc}") from exc
