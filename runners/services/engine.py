"""The embedded engine: event store + views + projector, composed from a configuration.

`Engine` applies commands (runners.services.apply), keeps the views caught up, rebuilds them
(runners.services.rebuild), and answers queries live or as of a past domain time. Callers use
its operations (`state`, `events`, `read_log`, `head`, `positions`, `wait_for`, `query_*`, ...);
the event store and the view store are its own. The few services that own the stores themselves
(projection runners, shard move, export and audit scans, the composition root) take them from
`stores()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import structlog

from adapters.credentials.store import CredentialStore
from adapters.errors import StoreError
from adapters.eventstore.store import CONTENT_KEY, EventStore, LogCheck, LoggedEvent
from adapters.views.memory import MemoryViews
from domain.events import DomainEvent
from domain.state import TenantState
from projections import queries
from projections.history import AsOf
from projections.ports import Stuck, ViewReader, ViewStore
from projections.projector import Projector, ReplayLog, catch_up
from projections.rows import PROJECTIONS
from runners.services.apply import CommandApplication, Progress
from runners.services.credentials import still_set
from runners.services.rebuild import Rebuilding, ScratchFactory

if TYPE_CHECKING:
    from runners.bootstrap.settings import Settings

log = structlog.get_logger("crmsync.engine")


class Stores(NamedTuple):
    """An engine's event store and view store, for the services that own them."""

    events: EventStore
    views: ViewStore


class Reached(NamedTuple):
    """Where a wait for the views ended: the lowest projection position, and the log's end."""

    views: int
    log: int



def _sqlite_scratch(path: str, content_key: str | None) -> ScratchFactory:
    """Scratch views (rebuild, verify) beside an embedded engine's SQLite file."""
    from adapters.views.sqlite import SqliteViews

    return lambda suffix: SqliteViews(path, suffix=suffix, content_key=content_key)


class Engine(CommandApplication, Rebuilding):
    """One event store and its views. Commands: `execute`, `execute_batch`, `apply_lines`
    (runners.services.apply); rebuild and verify (runners.services.rebuild); reads below."""

    def __init__(self, store: EventStore, views: ViewStore, path: str | None = None,
                 scratch: ScratchFactory | None = None,
                 credentials: CredentialStore | None = None) -> None:
        self._store = store
        self._views = views
        self.credentials = credentials  # None (in memory): ConnectMailbox credentials are dropped
        self.path = path
        if scratch is None and path is not None:
            scratch = _sqlite_scratch(path, store.env.get(CONTENT_KEY))
        self.scratch = scratch  # None: rebuild in place, verify in memory
        # (names, parts, progress) -> None: a rebuild in part processes (set for PostgreSQL)
        self.rebuild_in_parts: Callable[[list[str], int, Progress | None], None] | None = None
        self.projector = Projector()
        # The in-memory projector is one thread's at a time: catch_up waits for it, a live
        # query only tries it (it reads the committed views when another thread is projecting).
        self._projecting = threading.Lock()
        self._background = False  # share_between_threads: a follower thread catches up
        self._follower: threading.Thread | None = None
        self._follower_lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = False
        # Embedded: commands and queries bring the views up to date in this process. False when
        # projection runners run as processes of their own (`crmsync run projections`).
        self.follow = True

    @classmethod
    def open_in_memory(cls) -> Engine:
        return cls(EventStore.in_memory(), MemoryViews())

    @classmethod
    def open_sqlite(cls, path: str, settings: Settings | None = None) -> Engine:
        """The embedded engine on the SQLite file `path`, keyed by the settings' CONTENT_KEY and
        CREDENTIALS_KEY (unset: key files beside the db). Runners pass their settings; without
        them the environment's are read (~35 test call sites do that; issue #12 leftover)."""
        # imported here: the engine's own module loads no database driver (the SQLite ones are
        # the embedded engine's; PostgreSQL engines are built in runners.bootstrap)
        from adapters.credentials.store_sqlite import SqliteCredentialStore
        from adapters.views.sqlite import SqliteViews
        from runners.bootstrap.settings import load_settings

        settings = settings or load_settings()
        content_key = settings.secret("CONTENT_KEY")
        credentials_key = settings.secret("CREDENTIALS_KEY")
        return cls(EventStore.sqlite(path, content_key), SqliteViews(path, content_key=content_key),
                   path, credentials=SqliteCredentialStore(path, credentials_key))

    def close(self) -> None:
        if self._follower is not None:
            self._stopping = True
            self._wanted.set()
            self._follower.join(60)
        close = getattr(self._views, "close", None)
        if callable(close):
            close()
        if self.credentials is not None:
            self.credentials.close()
        self._store.close()

    def stores(self) -> Stores:
        """The stores themselves, for their owners only (see the module's docstring)."""
        return Stores(self._store, self._views)

    # -- the log --------------------------------------------------------------------------------
    def state(self, tenant: str, lazy: bool = False) -> TenantState:
        """The tenant's folded state as of its latest event (cached; do not change it).
        `lazy`: its mailboxes perhaps not folded yet (`EventStore.state`), for a caller that
        reads no mailbox (users, records) or handles MailboxNotLoaded."""
        return self._store.state(tenant, lazy)

    def state_with(self, tenant: str, mailbox: str) -> TenantState:
        """The tenant's state with `mailbox` folded, its other mailboxes perhaps not (#15:
        reading another one raises MailboxNotLoaded), for a caller that reads that mailbox
        only: a sync worker's delivery folds the mailbox it syncs, not the tenant's mail."""
        return self._store.state_with(tenant, mailbox)

    def credentials_still_set(self, tenant: str, mailbox: str) -> bool:
        """`credentials.still_set`: asked by a token refresh before it stores a new token."""
        return still_set(self._store, tenant, mailbox)

    def events(self, tenant: str, after: int = 0) -> Iterator[tuple[int, DomainEvent]]:
        """(seq, event) of the tenant's stream after `after`, in order."""
        return self._store.tenant_events(tenant, after)

    def read_log(self, after: int, limit: int) -> list[LoggedEvent]:
        """Events after log position `after`, at most `limit`, in log order."""
        return self._store.read_log(after, limit)

    def read_log_kept(self, after: int, limit: int,
                      keep: Callable[[type[DomainEvent], bytes], bool] | None
                      ) -> tuple[list[LoggedEvent], int]:
        """`read_log`, decoding only what `keep` accepts (see EventStore.read_log_kept)."""
        return self._store.read_log_kept(after, limit, keep)

    def head(self) -> int:
        """The log position of the last event (0: empty log)."""
        return self._store.max_position()

    def log_position(self, tenant: str, seq: int) -> int | None:
        """The log position of the tenant's event `seq` (None: no such event)."""
        return self._store.log_position(tenant, seq)

    def verify_log(self, tenant: str | None = None) -> LogCheck:
        """E7: every tenant's hash chain (or `tenant`'s) recomputed from the stored bytes."""
        return self._store.verify_log(tenant)

    # -- the views ------------------------------------------------------------------------------
    def positions(self) -> dict[str, int]:
        """Each projection's position in the log."""
        return self._views.positions()

    def caught_up(self) -> bool:
        """Whether every projection has processed the whole log."""
        positions, end = self._views.positions(), self.head()
        return all(positions.get(name, 0) >= end for name in PROJECTIONS)

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        """(projection, tenant) -> where its events are held back and why (E8)."""
        return self._views.stuck()

    def checksums(self) -> dict[str, str]:
        """Each projection's checksum of its rows."""
        return {name: self._views.checksum(name) for name in PROJECTIONS}

    def committed_views(self) -> ViewReader:
        """The live views as committed, without catching up first (see `reader`)."""
        return self._views

    def mailbox_states(self) -> dict[tuple[str, bool], int] | None:
        """Mailboxes by (status, suspect), all tenants, where the view store counts them."""
        states = getattr(self._views, "mailbox_states", None)
        return cast(dict[tuple[str, bool], int], states()) if callable(states) else None

    def wait_for(self, position: int, timeout: float) -> Reached:
        """Wait at most `timeout` seconds until every projection has processed log `position`
        (`reached.views` is below it when the time ran out); at once for a position past the
        log's end (`reached.log`). Embedded (`follow`), the follower thread is asked to catch
        up meanwhile; else the projection runners do."""
        deadline = time.monotonic() + timeout
        while True:
            end = self.head()
            reached = Reached(min(self._views.positions().values()), end)
            if position > reached.log or reached.views >= position \
                    or time.monotonic() >= deadline:
                return reached
            if self.follow:
                self.request_catch_up()
            time.sleep(0.01)

    # -- projections ----------------------------------------------------------------------------
    def catch_up(self, progress: Progress | None = None) -> int:
        with self._projecting:
            return catch_up(self._store, self._views, self.projector, progress=progress)

    def share_between_threads(self) -> None:
        """Serve many threads at once (the HTTP API): live queries no longer catch up in their
        own thread (they read the committed views and ask the follower thread to catch up)."""
        self._background = True

    def request_catch_up(self) -> None:
        """Have the follower thread catch up (started on first use), without waiting for it."""
        with self._follower_lock:
            if self._follower is None:
                self._follower = threading.Thread(target=self._follow, name="crmsync-follower",
                                                  daemon=True)
                self._follower.start()
        self._wanted.set()

    def _follow(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                self.catch_up()
            except StoreError as exc:  # the next request tries again; readers read what is
                log.warning("catch_up_failed", error=str(exc))

    def try_catch_up(self) -> bool:
        """Catch up unless another thread of this process is doing so (then return False at
        once): a reader never waits behind a writer's catch-up, it reads the committed views."""
        if not self._projecting.acquire(blocking=False):
            return False
        try:
            catch_up(self._store, self._views, self.projector)
        finally:
            self._projecting.release()
        return True

    # -- queries --------------------------------------------------------------------------------
    def reader(self, tenant: str, at: datetime | None = None) -> ViewReader:
        """Live views (caught up first unless another thread is catching up), or the same
        views as of domain time `at`, read from their histories (projections.history): no
        replay, the cost of a live read.

        Thread-safe for readers: the view stores read on per-thread connections (SQLite) or a
        connection of their own (PostgreSQL), the event store from its pool."""
        if self.follow and self._background:
            self.request_catch_up()
        elif self.follow:
            self.try_catch_up()
        return self._views if at is None else AsOf(self._views, at)

    def _answer(self, name: str, tenant: str, viewer: str, at: datetime | None,
                *args: Any) -> Any:
        return QUERIES[name](self.reader(tenant, at), tenant, viewer, *args)

    def query_timeline(self, tenant: str, viewer: str, record: str, at: datetime | None = None
                       ) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._answer("timeline", tenant, viewer, at, record))

    def query_mailbox(self, tenant: str, viewer: str, label: str | None = None,
                      at: datetime | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._answer("mailbox", tenant, viewer, at, label))

    def query_thread(self, tenant: str, viewer: str, thread: str, at: datetime | None = None
                     ) -> dict[str, Any]:
        return cast(dict[str, Any], self._answer("thread", tenant, viewer, at, thread))

    def query_explain(self, tenant: str, viewer: str, thread: str, record: str | None = None,
                      at: datetime | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._answer("explain", tenant, viewer, at, thread, record))

    def query_records(self, tenant: str, viewer: str, email: str | None = None,
                      at: datetime | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._answer("records", tenant, viewer, at, email))

    def query_status(self, tenant: str, viewer: str, mailbox: str | None = None,
                     at: datetime | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._answer("status", tenant, viewer, at, mailbox))

    def query_contact(self, tenant: str, viewer: str, record: str, at: datetime | None = None
                      ) -> dict[str, Any]:
        return cast(dict[str, Any], self._answer("contact", tenant, viewer, at, record))


QUERIES: dict[str, Callable[..., Any]] = {
    "timeline": queries.timeline, "mailbox": queries.mailbox, "thread": queries.thread,
    "explain": queries.explain, "records": queries.records, "status": queries.sync_status,
    "contact": queries.contact}


def replayed(store: EventStore, tenant: str, at: datetime) -> MemoryViews:
    """The tenant's views as of domain time `at`: the live projector over its stream up to `at`
    (the reference the histories are tested against; `Engine.reader` reads those)."""
    events = []
    for seq, event in store.tenant_events(tenant):
        if event.occurred_at > at:
            break
        events.append((seq, event))
    views = MemoryViews()
    catch_up(ReplayLog(events), views, Projector(), batch_size=10_000)
    return views
