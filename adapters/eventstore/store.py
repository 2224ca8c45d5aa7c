"""The event store: eventsourcing's recorders, with our pydantic events serialised by orjson.

One stream per tenant (originator id = uuid5 of the tenant id); the stream version is the event's
`seq`. Appends seal mail content with its owner's key and chain every event (the stored form:
adapters.eventstore.mapper; the chain and its check: adapters.eventstore.chain); a tenant's state
is its events folded, cached per process and restored from snapshots. Reads of the whole log
(all tenants, in recording order) are in adapters.eventstore.log_reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, cast
from uuid import UUID, uuid5

import structlog
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.utils import get_topic

from adapters.errors import ConcurrencyConflict, StoreError
from adapters.eventstore import log_reads
from adapters.eventstore.chain import (
    GENESIS,
    LogCheck,
    chain_link,
    link_of,
    split_chain,
    stored_events,
    unwrap,
    verify_chain,
)
from adapters.eventstore.content_keys import (
    ContentKeys,
    MemoryContentKeys,
    configured_master_key,
)
from adapters.eventstore.log_reads import LoggedEvent
from adapters.eventstore.mapper import EventEnvelope, PydanticMapper, event_class
from adapters.eventstore.seal import SEALED_KINDS
from adapters.eventstore.snapshots import Snapshots
from adapters.gc_pause import paused_gc
from adapters.metrics import prometheus as metrics
from domain import events as ev
from domain.events import DomainEvent
from domain.lazy_mailboxes import unloaded
from domain.state import Mailbox, SyncedMessage, TenantState, evolve, evolve_synced

if TYPE_CHECKING:
    from adapters.eventstore.lazy_store import LazyTenants

# What callers import from here; some of it lives in the modules split off this one (issue #12)
__all__ = ["CONTENT_KEY", "TENANT_PAGE", "EventEnvelope", "EventStore", "LogCheck", "LoggedEvent",
           "PydanticMapper", "_event_class", "chain_link", "postgres_defaults", "split_chain",
           "stream_id"]
_event_class = event_class  # adapters.eventstore.scan's name for it
_ERASED_TOPIC = get_topic(ev.UserContentErased)

log = structlog.get_logger("crmsync.store")
TENANT_PAGE = 5000  # events per read of a tenant's stream
StoredRow = tuple[int, str, bytes]  # a stored event as a fold reads it: version, topic, bytes
TENANT_NAMESPACE = UUID("5c1f3a52-8a53-4a8e-9f5e-3c9b2f0e6d11")
# the store env's entry for base64 of the content master key ($CRMSYNC_CONTENT_KEY, L2); it
# travels with the env to the processes that open the store again (rebuild parts)
CONTENT_KEY = "CONTENT_KEY"


def stream_id(tenant: str) -> UUID:
    return uuid5(TENANT_NAMESPACE, tenant)


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


class EventStore:
    """Port over the eventsourcing application: append to a tenant stream, read streams and log."""

    def __init__(self, env: dict[str, str]) -> None:
        # how to open this store again (other processes: rebuild parts)
        self.env = dict(env)
        try:
            self.app = CrmSyncApplication(env=postgres_defaults(env))
        except PersistenceError as exc:
            raise StoreError(f"cannot open the event store: {exc}") from exc
        self._states: dict[str, TenantState] = {}
        self.snapshots: Snapshots | None = None  # set by the composition root (runners)
        # mailboxes folded when first touched (PostgreSQL, CRMSYNC_LAZY_MAILBOXES): `lazy_on`
        self.lazy: LazyTenants | None = None
        self._whole: set[str] = set()  # tenants folded whole in this process after all
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
        to_event = self.mapper.to_domain_event
        for found in self._stored_pages(tenant, after, page):
            for stored in found:
                yield stored.originator_version, cast(EventEnvelope, to_event(stored)).event

    def _stored_pages(self, tenant: str, after: int, page: int
                      ) -> Iterator[Sequence[StoredEvent]]:
        """The tenant's stored events after `after`, a page of at most `page` at a time."""
        stream = stream_id(tenant)
        while True:
            try:
                self.keys.expire()
                found = self.app.recorder.select_events(stream, gt=after or None, limit=page)
            except PersistenceError as exc:
                raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
            if found:
                yield found
            if len(found) < page:
                return
            after = found[-1].originator_version

    def _rows(self, tenant: str, after: int, page: int) -> Iterator[list[StoredRow]]:
        """Pages of the tenant's (version, topic, stored bytes) after `after`. On PostgreSQL
        the next page is read while the caller folds this one (the server's work and ours
        overlap: reading was a third of the 1M tenant's load)."""
        stream = stream_id(tenant)
        select = getattr(self.app.recorder, "select_stream", None)
        if select is None:
            for stored in self._stored_pages(tenant, after, page):
                yield [(s.originator_version, s.topic, s.state) for s in stored]
            return
        read = cast(Callable[[UUID, int, int], list[StoredRow]], select)
        with ThreadPoolExecutor(1, thread_name_prefix="tenant-read") as ahead:
            pending: Future[list[StoredRow]] | None = ahead.submit(read, stream, after, page)
            while pending is not None:
                try:
                    found = pending.result()
                except PersistenceError as exc:
                    raise StoreError(f"cannot read tenant {tenant!r}: {exc}") from exc
                pending = ahead.submit(read, stream, found[-1][0], page) \
                    if len(found) == page else None
                self.keys.expire()  # as for each page read (L2: a key destroyed elsewhere)
                yield found

    def _fold(self, state: TenantState) -> tuple[int, bool]:
        """Fold the tenant's events after `state.seq` into it; how many there were, and whether
        a user's content was erased among them. Synced messages are decoded straight into what
        the fold reads (`PydanticMapper.to_fold`)."""
        to_fold, folded, erased = self.mapper.to_fold, 0, False
        stream, content = stream_id(state.tenant), state.message_content
        with paused_gc():
            for found in self._rows(state.tenant, state.seq, TENANT_PAGE):
                # a page decoded, then folded: alternating the two per event was slower
                items = [(seq, to_fold(stream, seq, topic, stored, content))
                         for seq, topic, stored in found]
                for seq, item in items:
                    if type(item) is SyncedMessage:
                        evolve_synced(state, item, seq)
                    else:
                        erased = erased or type(item) is ev.UserContentErased
                        evolve(state, cast(DomainEvent, item), seq)
                folded += len(found)
        return folded, erased

    def lazy_on(self) -> None:
        """Fold each tenant's mailboxes when a command first touches them (PostgreSQL only:
        the mailbox reads are by its index; `adapters.eventstore.lazy_store`)."""
        # the mailbox reads find their rows in the stored JSON (the thread index, E5's search):
        # not in a compressed or encrypted event (then every tenant is folded whole, as before)
        if getattr(self.app.recorder, "select_stream", None) is not None \
                and not (self.mapper.cipher or self.mapper.compressor):
            from adapters.eventstore.lazy_store import LazyTenants

            self.lazy = LazyTenants(self)

    def state(self, tenant: str, lazy: bool = False) -> TenantState:
        """The tenant's current state (cached, fast-forwarded from the store). Not cached yet:
        from its snapshot when there is a good one (`self.snapshots`), and a load that folded
        many events leaves a new snapshot for the next process.

        `lazy` (the engine's commands, with `lazy_on`): without a snapshot, a state whose
        mailboxes are folded when first touched (`domain.lazy_mailboxes`: asked about one not
        folded yet, it raises MailboxNotLoaded, and `load_mailboxes` folds it). Every other
        caller gets a whole state: a lazy one cached is completed first."""
        state = self._states.get(tenant)
        if state is not None and unloaded(state) is not None:
            return self._lazy_state(state, lazy)
        restored = False
        if state is None:
            found = self._restore(tenant)
            restored = found is not None
            if found is None and lazy and self.lazy is not None and tenant not in self._whole:
                return self._lazy_state(self.lazy.start(tenant), lazy)
            # no rule reads a message's content: the command side keeps none
            state = found or TenantState(tenant, message_content=False)
        folded, erased = self._fold(state)
        self._states[tenant] = state
        if restored and erased:
            # L2: a snapshot older than an erasure (a process killed between writing it and
            # `_erased_after` left it) is gone once it is read. The command side's state keeps
            # no subject, so it holds none; no snapshot outlives an erasure all the same
            self._discard_snapshot(tenant)
        if self.snapshots is not None and folded >= self.snapshots.every:
            try:
                size = self.snapshots.take(state)
                if self._erased_after(tenant, state.seq):
                    self._discard_snapshot(tenant)
                else:
                    log.info("snapshot_taken", tenant=tenant, seq=state.seq, bytes=size)
            except StoreError as exc:  # a cache: the log stays the truth
                log.warning("snapshot_not_taken", tenant=tenant, error=str(exc))
        return state

    def _lazy_state(self, state: TenantState, lazy: bool) -> TenantState:
        """A lazy state cached and fast-forwarded (never a snapshot: it is partial). For a
        caller that wants it whole, completed first (at most 8 mailboxes: past that the whole
        fold is faster than each mailbox's) and kept whole, so its holder never meets
        MailboxNotLoaded; else the tenant is folded whole from now on."""
        assert self.lazy is not None
        tenant = state.tenant
        self._states[tenant] = state
        self.lazy.fold(state, (r for rows in self._rows(tenant, state.seq, TENANT_PAGE)
                               for r in rows))
        waiting = unloaded(state)
        assert waiting is not None
        if self._states.get(tenant) is not state:  # given up while folding
            return self.state(tenant, lazy)
        if not lazy:
            if len(waiting) > 8 or not self.lazy.load(state, set(waiting)):
                self.give_up_lazy(tenant)
                return self.state(tenant)
            waiting.closed = True
            self._whole.add(tenant)
        return state

    def load_mailboxes(self, state: TenantState, mailboxes: frozenset[str]) -> bool:
        """Fold `mailboxes` into the lazy `state` (MailboxNotLoaded named them; none: every
        one). False when that is not done in place: the tenant is then folded whole by the
        next `state()` (every mailbox asked for, one not readable by index, or none of them
        waiting: each call makes progress, so a caller's retries end)."""
        waiting = unloaded(state)
        if not waiting:
            return True
        todo = set(mailboxes) & waiting
        assert self.lazy is not None
        if not mailboxes or not todo:
            self.give_up_lazy(state.tenant)
            return False
        return self.lazy.load(state, todo)

    def give_up_lazy(self, tenant: str) -> None:
        """Fold `tenant` whole in this process from now on (its lazy state dropped)."""
        self._forget(tenant)
        self._whole.add(tenant)

    def state_with(self, tenant: str, mailbox: str) -> TenantState:
        """The tenant's state with `mailbox` folded, its other mailboxes perhaps not (lazy:
        `state`), for a caller that reads that one mailbox only (a sync delivery)."""
        return self._with(self.state(tenant, lazy=True), mailbox)

    def mailbox(self, state: TenantState, mailbox: str) -> Mailbox | None:
        """`state.mailboxes.get(mailbox)`, the mailbox folded first if `state` is lazy."""
        return self._with(state, mailbox).mailboxes.get(mailbox)

    def _with(self, state: TenantState, mailbox: str) -> TenantState:
        """`state` with `mailbox` folded; the tenant's whole state when that could not be
        done in place."""
        waiting = unloaded(state)
        if waiting and mailbox in waiting and not self.load_mailboxes(state,
                                                                      frozenset((mailbox,))):
            return self.state(state.tenant)  # folded whole now
        return state

    def _discard_snapshot(self, tenant: str) -> None:
        """Delete the tenant's snapshot: it was taken before a user's content was erased."""
        assert self.snapshots is not None
        try:
            self.snapshots.discard(tenant)
        except StoreError as exc:  # the erasing process discards too; the next load again
            log.warning("snapshot_not_discarded", tenant=tenant, error=str(exc))
            return
        log.info("snapshot_discarded", tenant=tenant, reason="erased after it")

    def erased_in_log_after(self, position: int) -> bool:
        """Whether a user's content was erased after log `position` (the projection runners'
        snapshot at `position`, as `_erased_after` for a tenant's)."""
        after = position
        while True:
            found, last = self.read_log_kept(after, TENANT_PAGE,
                                             lambda kind, _: kind is ev.UserContentErased)
            if any(type(e.event) is ev.UserContentErased for e in found):
                return True
            if last == after:
                return False
            after = last

    def _erased_after(self, tenant: str, seq: int) -> bool:
        """Whether a user's content was erased after `seq`, read after a snapshot of the state
        at `seq` was written (L2): the erasing process appends, destroys the key, then discards
        the snapshots, so its discard may have come before this snapshot (holding the erased
        user's subjects) was stored; an erasure not in the log yet discards it afterwards."""
        return any(topic == _ERASED_TOPIC for found in self._rows(tenant, seq, TENANT_PAGE)
                   for _, topic, _ in found)

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
        if self.lazy is not None and not self.lazy.ready_for(state, events):
            # a mailbox not readable by index: decided again on a whole state (a conflict is
            # retried by the caller)
            raise ConcurrencyConflict(f"tenant {state.tenant!r}: folded whole, decide again")
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
        # L2: the first seal of this append asks whether another process destroyed a key
        self.keys.expire()
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
        if self.lazy is not None:
            self.lazy.forget(tenant)

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
        return link_of(unwrap(self.app.mapper, found[0]))

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
        if self.lazy is not None:
            self.lazy.forget(tenant)

    # -- the application log (all tenants, in recording order: adapters.eventstore.log_reads) --
    def max_position(self) -> int:
        return log_reads.max_position(self.app)

    def log_position(self, tenant: str, seq: int) -> int | None:
        """The log position of the tenant's event `seq` (None: no such event): callers are handed
        tenant positions (§8), and waits on the views need the log's."""
        return log_reads.log_position(self.app, self.env.get("PERSISTENCE_MODULE"),
                                      stream_id(tenant), seq)

    def read_log_kept(self, after: int, limit: int, keep: log_reads.Keep | None
                      ) -> tuple[list[LoggedEvent], int]:
        """Like `read_log`, decoding only the events `keep(event class, stored JSON)` accepts
        (all of them without `keep`, or when stored events are compressed or encrypted); also
        returns the last position read (`after` when there was nothing)."""
        return log_reads.read_log_kept(self.app, self.keys, after, limit, keep)

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        """Events after log position `after`, at most `limit`, in log order."""
        return self.read_log_kept(after, limit, None)[0]

    # -- E7: the hash chain (adapters.eventstore.chain) ---------------------------------------
    def verify_log(self, tenant: str | None = None, page: int = TENANT_PAGE) -> LogCheck:
        """Recompute every tenant's chain (or `tenant`'s) from the stored bytes, in log order;
        stops at the first event that fails: a changed byte, a missing or reordered seq."""
        stream = None if tenant is None else stream_id(tenant)
        return verify_chain(stored_events(self.app.recorder, stream, page), self.app.mapper)


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
