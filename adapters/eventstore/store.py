"""The event store: eventsourcing's recorders, with our pydantic events serialised by orjson.

One stream per tenant (originator id = uuid5 of the tenant id); the stream version is the event's
`seq`. Datetimes and UUIDs round-trip typed because pydantic validates the stored JSON back into
the event class named by the stored topic.

What is stored per event is still one JSON object, with two fields of ours in front:
- `_chain` (E7): H(previous link || topic || version || the rest of the stored JSON), hex
  SHA-256, per tenant stream; the previous link of seq 1 is zeros. It covers the stored bytes,
  ciphertext included, so destroying a key does not break it. `verify_log` recomputes it.
- `_sealed` (L2), on events that carry mail content (subject, body, attachment names): the
  content encrypted under its owner's data key (adapters.eventstore.content_keys), as one string:
  base64url(owner) "." base64(nonce + ciphertext). The event's own content fields hold the
  erased placeholder (`domain.events.ERASED`), so an event whose key is destroyed decodes as
  erased and everything downstream (state, views, replays at any `at`) shows it erased
  (adapters.eventstore.seal).
eventsourcing's whole-event cipher and compressor, when configured, wrap all of that.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

from adapters.errors import ConcurrencyConflict, StoreError
from adapters.eventstore.content_keys import (
    ContentKeys,
    MemoryContentKeys,
    configured_master_key,
)
from adapters.eventstore.seal import SEALED_KEY, SEALED_KINDS, opened, seal_values, with_sealed
from adapters.eventstore.snapshots import Snapshots
from adapters.gc_pause import paused_gc
from adapters.metrics import prometheus as metrics
from domain import events as ev
from domain.events import DomainEvent
from domain.state import TenantState, evolve

log = structlog.get_logger("crmsync.store")
TENANT_PAGE = 5000  # events per read of a tenant's stream
TENANT_NAMESPACE = UUID("5c1f3a52-8a53-4a8e-9f5e-3c9b2f0e6d11")
# the store env's entry for base64 of the content master key ($CRMSYNC_CONTENT_KEY, L2); it
# travels with the env to the processes that open the store again (replays, rebuild parts)
CONTENT_KEY = "CONTENT_KEY"


def stream_id(tenant: str) -> UUID:
    return uuid5(TENANT_NAMESPACE, tenant)


@dataclass(frozen=True)
class EventEnvelope:
    """An event as the library stores it: our event plus its stream id and version."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    event: DomainEvent


GENESIS = "0" * 64
_CHAIN_HEAD = b'{"_chain":"'
_CHAIN_END = len(_CHAIN_HEAD) + 64


def chain_link(prev: str, topic: str, version: int, body: bytes) -> str:
    """E7: the link of one stored event (`body`: its JSON without the `_chain` field)."""
    digest = hashlib.sha256(prev.encode())
    digest.update(b"\0" + topic.encode() + b"\0" + str(version).encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def split_chain(state: bytes) -> tuple[str | None, bytes]:
    """(the stored link, the JSON it covers); (None, state) for an event stored without one."""
    if state.startswith(_CHAIN_HEAD) and state[_CHAIN_END:_CHAIN_END + 2] == b'",':
        return state[len(_CHAIN_HEAD):_CHAIN_END].decode(), b"{" + state[_CHAIN_END + 2:]
    return None, state


def link_of(stored: StoredEvent) -> str:
    """What the next event of the stream chains to: this one's link; for an event written
    before the chain existed, a hash of its stored bytes (so it is pinned all the same)."""
    link, _ = split_chain(stored.state)
    if link is not None:
        return link
    return chain_link("legacy", stored.topic, stored.originator_version, stored.state)


class PydanticMapper(Mapper[UUID]):
    """Maps EventEnvelope <-> StoredEvent with orjson; pydantic restores the types. Content is
    sealed with its owner's key (`keys`, set by the EventStore) and every event is chained."""

    keys: ContentKeys | None = None
    # Only benchmarks.content_cost turns this off, to measure the same workload without
    # sealing in the same run; nothing else may (L2: content is never stored in plaintext).
    seal = True

    def encode(self, envelope: EventEnvelope, owner: str | None, prev: str
               ) -> tuple[StoredEvent, str]:
        """The stored event and its chain link. `owner`: whose key seals the content."""
        event = envelope.event
        kind = type(event)
        doc = event.model_dump(by_alias=True)
        box = None
        if self.seal and isinstance(event, SEALED_KINDS) \
                and (values := seal_values(doc, kind)) is not None:
            if owner is None or self.keys is None:
                raise StoreError(f"cannot store {kind.__name__}: no owner or content keys to "
                                 "seal its content with")
            box = self.keys.seal(event.tenant, owner, values)
        topic = get_topic(kind)
        body = orjson.dumps(doc)
        if box is not None:
            body = with_sealed(body, cast(str, owner), box)
        link = chain_link(prev, topic, envelope.originator_version, body)
        state = _CHAIN_HEAD + link.encode() + b'",' + body[1:]
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(originator_id=envelope.originator_id,
                           originator_version=envelope.originator_version,
                           topic=topic, state=state), link

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """The library's path (Application.save): only for events without content, and it
        cannot chain; the EventStore appends through `encode`."""
        raise StoreError("append through EventStore: events are sealed and chained there")

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            # past the chain link, without copying: where the event's own JSON goes on
            start = _CHAIN_END + 2 if state.startswith(_CHAIN_HEAD) else 1
            cls: type[DomainEvent] = resolve_topic(stored_event.topic)
            if state.startswith(SEALED_KEY, start):
                event = cls.model_validate_json(opened(state, start, cls, self.keys))
            else:
                event = cls.model_validate_json(state if start == 1 else b"{" + state[start:])
        except StoreError:
            raise
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
    """`env` with bounded waits on PostgreSQL (adapters.eventstore.recorder_postgres), where it
    does not choose otherwise: a store that is down fails within seconds instead of hanging
    callers."""
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        return env
    from adapters.eventstore.recorder_postgres import BoundedPostgresRecorder

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
        # how to open this store again (runners.services.replays: other processes)
        self.env = dict(env)
        try:
            self.app = CrmSyncApplication(env=postgres_defaults(env))
        except PersistenceError as exc:
            raise StoreError(f"cannot open the event store: {exc}") from exc
        self._states: dict[str, TenantState] = {}
        self.snapshots: Snapshots | None = None  # set by the composition root (runners)
        self._heads: dict[str, tuple[int, str]] = {}  # tenant -> (seq, chain link) last written
        self._owners: dict[tuple[str, str], str] = {}  # (tenant, mailbox) -> user
        try:
            self.keys = _content_keys(env)
        except BaseException:
            self.app.close()
            raise
        self.mapper.keys = self.keys
        self.finish_erasures()

    @property
    def mapper(self) -> PydanticMapper:
        return cast(PydanticMapper, self.app.mapper)

    @classmethod
    def in_memory(cls) -> EventStore:
        return cls({"PERSISTENCE_MODULE": "eventsourcing.popo"})

    @classmethod
    def sqlite(cls, path: str, content_key: str | None = None) -> EventStore:
        """`content_key`: base64 of the content master key (else a key file beside `path`)."""
        from adapters.private_files import private_file

        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
               "SQLITE_DBNAME": private_file(path), "SQLITE_LOCK_TIMEOUT": "10"}
        return cls({**env, CONTENT_KEY: content_key} if content_key else env)

    def close(self) -> None:
        self.app.close()
        self.keys.close()
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
                self.keys.refresh()
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
        after = state.seq
        # `state` is untouched (folded only after a save), so a conflict keeps it cached: the next
        # state() fast-forwards it instead of folding the whole tenant again, which made a loser
        # of a race lose again
        self._put(state.tenant, after, events, state, keep_state_on_conflict=True)
        for i, event in enumerate(events, 1):
            evolve(state, event, after + i)

    def append_folded(self, state: TenantState, after: int, events: Sequence[DomainEvent]) -> None:
        """Append events already folded into `state` (a batch decided command by command on
        it), as seq `after`+1…, in one transaction. On any failure the cached state is dropped,
        so the next `state()` reloads it from the store."""
        self._put(state.tenant, after, events, state)

    def append_raw(self, tenant: str, after: int, events: Sequence[DomainEvent]) -> None:
        """Append without a state (bulk loaders: benchmarks.generate); mail must come after its
        mailbox's MailboxConnected, in this process."""
        self._put(tenant, after, events, None)

    def _put(self, tenant: str, after: int, events: Sequence[DomainEvent],
             state: TenantState | None, *, keep_state_on_conflict: bool = False) -> None:
        if not events:
            return
        stream = stream_id(tenant)
        erasing = [e for e in events if isinstance(e, ev.UserContentErased)]
        for erased in erasing:  # the intent first: a crash after the append leaves a trace
            self.keys.mark_erasing(tenant, erased.user, erased.occurred_at.isoformat())
        try:
            prev = self._head(tenant, after)
            stored = []
            for i, event in enumerate(events, 1):
                envelope = EventEnvelope(stream, after + i, event.occurred_at, event)
                item, prev = self.mapper.encode(envelope, self._owner(event, state), prev)
                stored.append(item)
            # The recorder directly: `Application.save` checks every object against a runtime
            # Protocol (a sixth of a sync batch's time) and notifies in-process followers, of
            # which there are none. One transaction, same NOTIFY.
            self.app.recorder.insert_events(stored)
        except BaseException as exc:
            if keep_state_on_conflict and isinstance(exc, IntegrityError):
                self._heads.pop(tenant, None)
            else:
                self._forget(tenant)
            for erased in erasing:
                self.keys.mark_erasing(tenant, erased.user, None)
            if isinstance(exc, IntegrityError):
                raise ConcurrencyConflict(f"tenant {tenant!r} changed concurrently") from exc
            if isinstance(exc, PersistenceError):
                raise StoreError(f"cannot append to tenant {tenant!r}: {exc}") from exc
            raise
        self._heads[tenant] = (after + len(events), prev)
        metrics.appended(events)
        for erased in erasing:  # durable: now shred (L2)
            self.erase_user(tenant, erased.user, erased.occurred_at)

    def erase_user(self, tenant: str, user: str, at: datetime) -> None:
        """Destroy the user's content key and every snapshot that may hold their content (a
        user who never had content had no key: nothing to discard)."""
        if self.keys.destroy(tenant, user, at.isoformat()) and self.snapshots is not None:
            self.snapshots.discard(tenant)

    def finish_erasures(self) -> None:
        """Erasures a process began and did not finish (it died between marking the key and
        destroying it): destroy the key when the tenant's log says the user is deleted, else
        (the append never happened) drop the mark."""
        for tenant, user in self.keys.pending_erasures():
            found = self.state(tenant).users.get(user)
            if found is not None and found.status == "deleted":
                log.warning("erasure_finished", tenant=tenant, user=user)
                self.erase_user(tenant, user, self.state(tenant).last_at or datetime.now(UTC))
            else:
                self.keys.mark_erasing(tenant, user, None)

    def _forget(self, tenant: str) -> None:
        self._states.pop(tenant, None)
        self._heads.pop(tenant, None)

    def _head(self, tenant: str, after: int) -> str:
        """The chain link of the tenant's event `after` (what the next event chains to)."""
        cached = self._heads.get(tenant)
        if cached is not None and cached[0] == after:
            return cached[1]
        if after == 0:
            return GENESIS
        found = self.app.recorder.select_events(stream_id(tenant), lte=after, desc=True, limit=1)
        if not found or found[0].originator_version != after:
            # the append fails on the version anyway; this only keeps the message clear
            raise IntegrityError(f"tenant {tenant!r} has no event {after}")
        return link_of(self._unwrap(found[0]))

    def _unwrap(self, stored: StoredEvent) -> StoredEvent:
        """The stored event with the library's cipher and compressor undone (when configured)."""
        mapper = self.app.mapper
        if not (mapper.cipher or mapper.compressor):
            return stored
        state = stored.state
        if mapper.cipher:
            state = mapper.cipher.decrypt(state)
        if mapper.compressor:
            state = mapper.compressor.decompress(state)
        return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)

    def _owner(self, event: DomainEvent, state: TenantState | None) -> str | None:
        """Whose key seals the event's content: the user of its mailbox."""
        if isinstance(event, ev.MailboxConnected):
            self._owners[(event.tenant, event.mailbox)] = event.user
            return None
        if isinstance(event, ev.EmailSent):
            return event.user
        if not isinstance(event, SEALED_KINDS):
            return None
        mailbox = event.mailbox
        if state is not None and (mbx := state.mailboxes.get(mailbox)) is not None:
            return mbx.user
        return self._owners.get((event.tenant, mailbox))

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

        # each technology's lookup lives with its driver (one driver per module)
        recorder, stream = self.app.recorder, stream_id(tenant)
        module = self.env.get("PERSISTENCE_MODULE")
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

    def read_log_kept(self, after: int, limit: int,
                      keep: Callable[[type[DomainEvent], bytes], bool] | None
                      ) -> tuple[list[LoggedEvent], int]:
        """Like `read_log`, decoding only the events `keep(event class, stored JSON)` accepts
        (all of them without `keep`, or when stored events are compressed or encrypted); also
        returns the last position read (`after` when there was nothing)."""
        mapper = self.app.mapper
        filtering = keep is not None and not (mapper.cipher or mapper.compressor)
        try:
            self.keys.refresh()
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

    # -- E7: the hash chain ---------------------------------------------------------------------
    def verify_log(self, tenant: str | None = None, page: int = TENANT_PAGE) -> LogCheck:
        """Recompute every tenant's chain (or `tenant`'s) from the stored bytes, in log order;
        stops at the first event that fails: a changed byte, a missing or reordered seq."""
        check = LogCheck()
        heads: dict[UUID, tuple[int, str]] = {}
        names: dict[UUID, str] = {}
        for position, recorded in self._stored(tenant, page):
            check.events += 1
            stream = recorded.originator_id
            stream = stream if isinstance(stream, UUID) else UUID(str(stream))
            seq, prev = heads.get(stream, (0, GENESIS))
            stored = self._unwrap(recorded)
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

    def _stored(self, tenant: str | None, page: int) -> Iterator[tuple[int | str, StoredEvent]]:
        recorder = self.app.recorder
        try:
            if tenant is not None:
                after = 0
                while True:
                    found = recorder.select_events(stream_id(tenant), gt=after or None,
                                                   limit=page)
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


@dataclass
class LogCheck:
    """The result of `verify_log`: events read, the first failure (None: the chain holds) and
    each tenant's last (seq, link), which an operator may keep elsewhere to detect truncation."""

    events: int = 0
    unchained: int = 0
    failure: str | None = None
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    chained: dict[UUID, bool] = field(default_factory=dict)


def _tenant_of(body: bytes, stream: UUID) -> str:
    try:
        tenant = orjson.loads(body).get("tenant")
    except (orjson.JSONDecodeError, AttributeError):
        tenant = None
    return tenant if isinstance(tenant, str) else str(stream)


def _content_keys(env: dict[str, str]) -> ContentKeys:
    """The content key store beside the events (L2), by persistence module; the master key is
    the env's CONTENT_KEY (passed by the composition root: adapters do not read the
    environment)."""
    master = configured_master_key(env.get(CONTENT_KEY))
    module = env.get("PERSISTENCE_MODULE", "")
    if module == "eventsourcing.sqlite":
        path = env["SQLITE_DBNAME"]
        if path != ":memory:" and "mode=memory" not in path:
            from adapters.eventstore.content_keys_sqlite import SqliteContentKeys
            return SqliteContentKeys(path, master)
    elif module == "eventsourcing.postgres":
        from adapters.eventstore.content_keys_postgres import PostgresContentKeys
        return PostgresContentKeys.from_env(env, master)
    return MemoryContentKeys()
