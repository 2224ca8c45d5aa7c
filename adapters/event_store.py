"""The event store: eventsourcing's recorders, with our pydantic events serialised by orjson.

One stream per tenant (originator id = uuid5 of the tenant id); the stream version is the event's
`seq`. Datetimes and UUIDs round-trip typed because pydantic validates the stored JSON back into
the event class named by the stored topic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, cast
from uuid import UUID, uuid5

import orjson
import structlog
from eventsourcing.application import Application
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    MapperDeserialisationError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.utils import TopicError, get_topic, resolve_topic

from adapters import metrics_prometheus as metrics
from adapters.errors import ConcurrencyConflict, StoreError
from adapters.gc_pause import paused_gc
from adapters.snapshots import Snapshots
from domain.events import DomainEvent
from domain.state import TenantState, evolve

log = structlog.get_logger("crmsync.store")
TENANT_PAGE = 5000  # events per read of a tenant's stream
TENANT_NAMESPACE = UUID("5c1f3a52-8a53-4a8e-9f5e-3c9b2f0e6d11")


def stream_id(tenant: str) -> UUID:
    return uuid5(TENANT_NAMESPACE, tenant)


@dataclass(frozen=True)
class EventEnvelope:
    """An event as the library stores it: our event plus its stream id and version."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    event: DomainEvent


class PydanticMapper(Mapper[UUID]):
    """Maps EventEnvelope <-> StoredEvent with orjson; pydantic restores the types."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        envelope: EventEnvelope = domain_event
        state = orjson.dumps(envelope.event.model_dump(by_alias=True))
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(originator_id=envelope.originator_id,
                           originator_version=envelope.originator_version,
                           topic=get_topic(type(envelope.event)), state=state)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            cls: type[DomainEvent] = resolve_topic(stored_event.topic)
            event = cls.model_validate_json(state)
        except Exception as exc:
            raise MapperDeserialisationError(
                f"cannot decode event {stored_event.topic} "
                f"v{stored_event.originator_version}: {exc}"
            ) from exc
        originator = stored_event.originator_id
        return EventEnvelope(originator if isinstance(originator, UUID) else UUID(originator),
                             stored_event.originator_version, event.occurred_at, event)


@functools.lru_cache(maxsize=256)
def _event_class(topic: str) -> type[DomainEvent]:
    kind = resolve_topic(topic)
    if not (isinstance(kind, type) and issubclass(kind, DomainEvent)):
        raise TopicError(f"{topic!r} is not an event class")
    return kind


class CrmSyncApplication(Application[UUID]):
    name = "crmsync"
    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}


# PostgreSQL: how long a call may wait for a pooled connection (seconds; the library's default is
# 30, and it retried ten times), and whether a pooled connection is checked before use.
POOL_TIMEOUT = "2"


def postgres_defaults(env: dict[str, str]) -> dict[str, str]:
    """`env` with bounded waits on PostgreSQL (adapters.postgres_recorder), where it does not
    choose otherwise: a store that is down fails within seconds instead of hanging callers."""
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        return env
    from adapters.postgres_recorder import BoundedPostgresRecorder

    return {"POSTGRES_CONNECT_TIMEOUT": POOL_TIMEOUT, "POSTGRES_PRE_PING": "y",
            "APPLICATION_RECORDER_TOPIC": get_topic(BoundedPostgresRecorder), **env}


@dataclass(frozen=True)
class LoggedEvent:
    """An event read from the application log: its global position and its tenant sequence."""

    position: int
    seq: int
    event: DomainEvent


class EventStore:
    """Port over the eventsourcing application: append to a tenant stream, read streams and log."""

    def __init__(self, env: dict[str, str]) -> None:
        try:
            self.app = CrmSyncApplication(env=postgres_defaults(env))
        except PersistenceError as exc:
            raise StoreError(f"cannot open the event store: {exc}") from exc
        self._states: dict[str, TenantState] = {}
        self.snapshots: Snapshots | None = None  # set by the composition root (runners)

    @classmethod
    def in_memory(cls) -> EventStore:
        return cls({"PERSISTENCE_MODULE": "eventsourcing.popo"})

    @classmethod
    def sqlite(cls, path: str) -> EventStore:
        from adapters.private_files import private_file

        return cls({"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": private_file(path),
                    "SQLITE_LOCK_TIMEOUT": "10"})

    def close(self) -> None:
        self.app.close()
        if self.snapshots is not None:
            self.snapshots.close()

    # -- tenant streams ----------------------------------------------------------------------
    def tenant_events(self, tenant: str, after: int = 0, page: int = TENANT_PAGE
                      ) -> Iterator[tuple[int, DomainEvent]]:
        """The tenant's events after `after`, in order, read `page` at a time: the library's
        reader holds every stored event it selects, so one unpaged read of a million-event
        stream took 3 GB that the process kept."""
        stream = stream_id(tenant)
        while True:
            try:
                found = [cast(EventEnvelope, item)
                         for item in self.app.events.get(stream, gt=after or None, limit=page)]
            except PersistenceError as exc:
                raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
            for envelope in found:
                yield envelope.originator_version, envelope.event
            if len(found) < page:
                return
            after = found[-1].originator_version

    def state(self, tenant: str) -> TenantState:
        """The tenant's current state (cached, fast-forwarded from the store). Not cached yet:
        from its snapshot when there is a good one (`self.snapshots`), and a load that folded
        many events leaves a new snapshot for the next process."""
        state = self._states.get(tenant)
        if state is None:
            state = self._restore(tenant) or TenantState(tenant)
        folded = 0
        with paused_gc():
            for seq, event in self.tenant_events(tenant, after=state.seq):
                evolve(state, event, seq)
                folded += 1
        self._states[tenant] = state
        if self.snapshots is not None and folded >= self.snapshots.every:
            try:
                size = self.snapshots.take(state)
                log.info("snapshot_taken", tenant=tenant, seq=state.seq, bytes=size)
            except StoreError as exc:  # a cache: the log stays the truth
                log.warning("snapshot_not_taken", tenant=tenant, error=str(exc))
        return state

    def _restore(self, tenant: str) -> TenantState | None:
        if self.snapshots is None:
            return None
        try:
            state = self.snapshots.restore(tenant)
        except StoreError as exc:
            log.warning("snapshot_not_read", tenant=tenant, error=str(exc))
            return None
        if state is not None:
            log.info("snapshot_restored", tenant=tenant, seq=state.seq)
        return state

    def append(self, state: TenantState, events: Sequence[DomainEvent]) -> None:
        """Append events after `state.seq` in one transaction, then fold them into `state`."""
        if not events:
            return
        stream = stream_id(state.tenant)
        envelopes = [EventEnvelope(stream, state.seq + i, e.occurred_at, e)
                     for i, e in enumerate(events, 1)]
        try:
            self.app.save(*envelopes)
        except IntegrityError as exc:
            self._states.pop(state.tenant, None)
            raise ConcurrencyConflict(f"tenant {state.tenant!r} changed concurrently") from exc
        except PersistenceError as exc:
            self._states.pop(state.tenant, None)
            raise StoreError(f"cannot append to tenant {state.tenant!r}: {exc}") from exc
        for envelope in envelopes:
            evolve(state, envelope.event, envelope.originator_version)
        metrics.appended(events)

    def append_folded(self, state: TenantState, after: int, events: Sequence[DomainEvent]) -> None:
        """Append events already folded into `state` (a batch decided command by command on
        it), as seq `after`+1…, in one transaction. On any failure the cached state is dropped,
        so the next `state()` reloads it from the store."""
        if not events:
            return
        stream = stream_id(state.tenant)
        envelopes = [EventEnvelope(stream, after + i, e.occurred_at, e)
                     for i, e in enumerate(events, 1)]
        try:
            # The application's event store directly: `Application.save` checks every object
            # against a runtime Protocol (a sixth of a sync batch's time) and notifies
            # in-process followers, of which there are none. Same transaction, same NOTIFY.
            self.app.events.put(envelopes)
        except IntegrityError as exc:
            self._states.pop(state.tenant, None)
            raise ConcurrencyConflict(f"tenant {state.tenant!r} changed concurrently") from exc
        except BaseException as exc:
            self._states.pop(state.tenant, None)
            if isinstance(exc, PersistenceError):
                raise StoreError(f"cannot append to tenant {state.tenant!r}: {exc}") from exc
            raise
        metrics.appended(events)

    def forget(self, tenant: str) -> None:
        """Drop the cached state of `tenant` (it was changed in place and not saved)."""
        self._states.pop(tenant, None)

    # -- the application log (all tenants, in recording order) ----------------------------------
    def max_position(self) -> int:
        try:
            return self.app.recorder.max_notification_id() or 0
        except PersistenceError as exc:
            raise StoreError(f"cannot read the event log: {exc}") from exc

    def log_position(self, tenant: str, seq: int) -> int | None:
        """The log position of the tenant's event `seq` (None: no such event): callers are handed
        tenant positions (§8), and waits on the views need the log's. One indexed lookup on the
        (stream, version) key of whichever recorder holds the log."""
        from eventsourcing.popo import POPOApplicationRecorder
        from eventsourcing.postgres import PostgresApplicationRecorder
        from eventsourcing.sqlite import SQLiteApplicationRecorder

        recorder, stream = self.app.recorder, stream_id(tenant)
        try:
            if isinstance(recorder, POPOApplicationRecorder):
                index = recorder._stored_events_index.get(str(stream), {})
                return index[seq] + 1 if seq in index else None
            if isinstance(recorder, SQLiteApplicationRecorder):
                with recorder.datastore.transaction(commit=False) as c:
                    c.execute(f"SELECT rowid FROM {recorder.events_table_name} "
                              "WHERE originator_id = ? AND originator_version = ?",
                              (stream.hex, seq))
                    row = c.fetchone()
                    return int(row[0]) if row else None
            if isinstance(recorder, PostgresApplicationRecorder):
                from psycopg.sql import SQL, Identifier

                query = SQL("SELECT notification_id FROM {}.{} WHERE originator_id = %s AND "
                            "originator_version = %s").format(
                    Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
                with recorder.datastore.transaction(commit=False) as cur:
                    cur.execute(query, (stream, seq))
                    found = cur.fetchone()
                    return int(found["notification_id"]) if found else None
        except PersistenceError as exc:
            raise StoreError(f"cannot read the event log: {exc}") from exc
        raise StoreError(f"no position lookup for {type(recorder).__name__}")

    def read_log_kept(self, after: int, limit: int,
                      keep: Callable[[type[DomainEvent], bytes], bool] | None
                      ) -> tuple[list[LoggedEvent], int]:
        """Like `read_log`, decoding only the events `keep(event class, stored JSON)` accepts
        (all of them without `keep`, or when stored events are compressed or encrypted); also
        returns the last position read (`after` when there was nothing)."""
        mapper = self.app.mapper
        filtering = keep is not None and not (mapper.cipher or mapper.compressor)
        try:
            notifications = self.app.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False)
            out = []
            for n in notifications:
                if filtering:
                    assert keep is not None
                    try:
                        wanted = keep(_event_class(n.topic), n.state)
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

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        """Events after log position `after`, at most `limit`, in log order."""
        return self.read_log_kept(after, limit, None)[0]
