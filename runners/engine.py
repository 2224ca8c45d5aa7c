"""The embedded engine: event store + views + projector, composed from a configuration.

`Engine` applies commands (each on its own transaction, rejections recorded when the tenant
exists), keeps the views caught up, and answers queries live or as of a past domain time.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import orjson
import structlog

from adapters import metrics_prometheus as metrics
from adapters.credential_store import CredentialStore, SqliteCredentialStore
from adapters.errors import ConcurrencyConflict, StoreError
from adapters.event_store import EventStore
from adapters.gc_pause import paused_gc
from adapters.memory_views import MemoryViews
from adapters.sqlite_views import SqliteViews
from domain.commands import Command, parse_command
from domain.decide import MAX_AHEAD, decide, rejection_event
from domain.errors import Rejection
from domain.events import CommandHadNoEffect, DomainEvent
from domain.state import TenantState, evolve
from projections import queries
from projections.history import AsOf
from projections.ports import ViewReader, ViewStore
from projections.projector import Projector, ReplayLog, build, catch_up
from projections.rows import PROJECTIONS
from runners.credentials import after_append, check_ready
from runners.settings import load_settings

Progress = Callable[[int, int], None]
log = structlog.get_logger("crmsync.engine")


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim, where there is one: hands freed heap pages back to the system."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def call() -> None:
        trim(0)

    return call


def trimming(progress: Progress | None, every: int = 50) -> Progress:
    """`progress`, also returning freed memory to the system every `every` batches: a rebuild's
    reader and writer threads churn through buffers that glibc would otherwise keep."""
    trim = _malloc_trim()
    calls = [0]

    def report(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] % every == 0:
            trim()
        if progress is not None:
            progress(done, total)

    return report


class ScratchViews(ViewStore, Protocol):
    """A view store in scratch tables (rebuild, verify) next to the live ones."""

    def drop(self) -> None: ...

    def swap_into_live(self, projection: str) -> None: ...

    def close(self) -> None: ...


ScratchFactory = Callable[[str], ScratchViews]  # table suffix -> scratch store


@dataclass
class ApplyReport:
    applied: int = 0
    unchanged: int = 0  # accepted, nothing to do (duplicate command_id, same value again)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    # per non-blank line: (line number, "applied" | "unchanged" | "rejected"); event-log position
    results: list[tuple[int, str]] = field(default_factory=list)
    # (line number, text): what an applied command's events say the caller should know (L4)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    position: int = 0  # global: for this process's waits only, never handed to a caller (§8)
    # tenant -> its stream version after applying: the position callers see (min_position)
    tenant_positions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.applied} applied, {self.unchanged} unchanged, "
                f"{len(self.rejected)} rejected")


class Gate(Protocol):
    """An authenticated caller (HTTP API): the one tenant it may touch, the actor its commands
    and rejections are recorded under, and its permission check (raises Rejection)."""

    @property
    def tenant(self) -> str: ...

    @property
    def actor(self) -> str: ...

    def authorise(self, state: TenantState, command: Command) -> None: ...

    def recordable(self, state: TenantState) -> bool:
        """Whether the caller's rejections are kept (E8): an active user or a service."""
        ...


REJECTION_TEXT = 1024  # E8: at most this many bytes of caller-sent text in a CommandRejected
CUT = "…[cut]"


def bounded_rejection(rejection: Rejection) -> Rejection:
    """E8: the caller's text in a rejection (command name, field, a reason quoting their input)
    cut to about 1 KiB in all: 128 bytes each for name and field (and an operator's actor)."""
    return Rejection(bounded(rejection.cmd, 128), bounded(rejection.field, 128),
                     bounded(rejection.reason, REJECTION_TEXT - 3 * 128))


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, marked when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:max(0, limit - len(CUT.encode()))].decode(errors="ignore") + CUT


def retries(budget: float) -> Iterator[int]:
    """Attempt numbers 0, 1, ... for `budget` seconds (at least 3 attempts). Counted in time, not
    tries: a writer that lost to the others 20 times in a row under a burst must not give up
    (E6: no command is lost to concurrency), and one stuck for the whole budget says so."""
    deadline = time.monotonic() + budget
    attempt = 0
    while attempt < 3 or time.monotonic() < deadline:
        yield attempt
        attempt += 1


def backoff(attempt: int) -> float:
    """Randomised, growing, capped: colliding writers spread out instead of colliding again."""
    return random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7)))


class Engine:
    # seconds a command (or a sync batch) keeps retrying against concurrent writers
    retry_for: float = 60.0

    def __init__(self, store: EventStore, views: ViewStore, path: str | None = None,
                 scratch: ScratchFactory | None = None,
                 credentials: CredentialStore | None = None) -> None:
        self.store = store
        self.views = views
        self.credentials = credentials  # None (in memory): ConnectMailbox credentials are dropped
        self.path = path
        if scratch is None and path is not None:
            scratch = lambda suffix: SqliteViews(path, suffix=suffix)  # noqa: E731
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
        # Held while a replay (`at`) folds its stream: the HTTP API bounds how many run at once.
        self.replay_slot: Callable[[], contextlib.AbstractContextManager[object]] = \
            contextlib.nullcontext
        # (query, tenant, viewer, args, at) -> answer: replays run there instead of in the
        # calling thread (runners.replays: a process pool, off this interpreter's GIL)
        self.replay: Callable[[str, str, str, tuple[Any, ...], datetime], Any] | None = None

    @classmethod
    def open_in_memory(cls) -> Engine:
        return cls(EventStore.in_memory(), MemoryViews())

    @classmethod
    def open_sqlite(cls, path: str) -> Engine:
        key = load_settings().secret("CREDENTIALS_KEY")
        return cls(EventStore.sqlite(path), SqliteViews(path), path,
                   credentials=SqliteCredentialStore(path, key))

    def close(self) -> None:
        if self._follower is not None:
            self._stopping = True
            self._wanted.set()
            self._follower.join(60)
        close = getattr(self.views, "close", None)
        if callable(close):
            close()
        if self.credentials is not None:
            self.credentials.close()
        self.store.close()

    # -- commands -------------------------------------------------------------------------------
    def execute(self, command: Command, *, now: datetime, correlation_id: str,
                gate: Gate | None = None) -> list[DomainEvent]:
        """Decide and append one command; retried on a concurrent append, each time decided
        again on the fresh state (a command without `at` takes the later of `now` and the
        tenant's latest event, E6: concurrent writers are never rejected for time). Raises
        Rejection.

        Then the credential store follows the events (`runners.credentials.after_append`); its
        failure raises CredentialStoreError after the events were appended.
        """
        check_ready(self.credentials, command)
        for attempt in retries(self.retry_for):
            if attempt:
                time.sleep(backoff(attempt))
            state = self.store.state(command.tenant)
            if gate is not None:
                gate.authorise(state, command)
            events = decide(state, command, now=now, correlation_id=correlation_id)
            try:
                self.store.append(state, events)
            except ConcurrencyConflict:
                continue
            after_append(self, command, state, events)
            return events
        raise ConcurrencyConflict(f"tenant {command.tenant!r}: too many concurrent writers")

    def execute_batch(self, commands: Sequence[Command], *, now: datetime,
                      correlation_id: str) -> list[list[DomainEvent]]:
        """Decide many commands of one tenant in order and append all their events in ONE
        transaction (the sync workers' batches). A rejected command becomes its CommandRejected
        event in the batch and the others go on. Retried whole on a concurrent append. Returns
        each command's events. Not for commands carrying credentials (nothing follows the
        append). Every retry decides again on the fresh state, so the other writer's later
        events date these (E6), never reject them. Raises ConcurrencyConflict when the retries
        run out and the store's errors as they are: nothing of the batch was appended, and the
        caller (a sync worker) must not acknowledge what it was doing."""
        if not commands:
            return []
        tenant = commands[0].tenant
        if any(cmd.tenant != tenant for cmd in commands):
            raise ValueError("a batch holds the commands of one tenant")
        for attempt in retries(self.retry_for):
            if attempt:
                time.sleep(backoff(attempt))
            state = self.store.state(tenant)
            base = state.seq
            results: list[list[DomainEvent]] = []
            try:
                for cmd in commands:
                    try:
                        events = decide(state, cmd, now=now, correlation_id=correlation_id)
                    except Rejection as rejection:
                        events = [rejection_event(state, cmd, rejection, now=now,
                                                  correlation_id=correlation_id,
                                                  actor=cmd.actor or "system:sync")]
                    for event in events:
                        evolve(state, event, state.seq + 1)
                    results.append(events)
                self.store.append_folded(state, base, [e for r in results for e in r])
            except ConcurrencyConflict:
                continue
            except BaseException:
                self.store.forget(tenant)
                raise
            metrics.batch_rejections(e for r in results for e in r)
            return results
        raise ConcurrencyConflict(f"tenant {tenant!r}: too many concurrent writers")

    def _record_rejection(self, raw: Any, rejection: Rejection, now: datetime, corr: str,
                          gate: Gate | None = None) -> None:
        tenant = raw.get("tenant") if isinstance(raw, dict) else None
        if not isinstance(tenant, str) or (gate is not None and tenant != gate.tenant):
            return
        state = self.store.state(tenant)
        if state.seq == 0:
            return  # no such tenant: nothing to attach the record to
        if gate is not None and not gate.recordable(state):
            return  # E8: not an active user or service of the tenant: store nothing
        actor = raw.get("actor") if isinstance(raw.get("actor"), str) else "system:cli"
        if gate is not None:
            actor = gate.actor
        at = now
        if isinstance(raw.get("at"), str):
            try:
                parsed = datetime.fromisoformat(raw["at"])
            except ValueError:
                parsed = None
            # never a time the clock would refuse (E6): the record would date the tenant ahead
            if parsed is not None and parsed.tzinfo is not None and parsed <= now + MAX_AHEAD:
                at = parsed
        event = rejection_event(state, rejection.cmd, rejection, now=at, correlation_id=corr,
                                actor=bounded(actor, 128))
        with contextlib.suppress(ConcurrencyConflict):  # best effort: the caller was told
            self.store.append(state, [event])

    def apply_lines(self, lines: Iterable[str | bytes], now: datetime | None = None, *,
                    gate: Gate | None = None) -> ApplyReport:
        """Apply JSON Lines commands in order, each on its own (blank lines are skipped).

        With a `gate`, commands of another tenant are rejected (and recorded nowhere), each
        command runs as the gate's actor, and the gate authorises it on the tenant's state.
        """
        report = ApplyReport()
        touched: set[str] = set() if gate is None else {gate.tenant}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            at = now or datetime.now(UTC)
            corr = f"cmd:{uuid.uuid4()}"
            try:
                command = parse_command(line)
                if gate is None:
                    touched.add(command.tenant)
                if gate is not None:
                    if command.tenant != gate.tenant:
                        raise Rejection(command.cmd, "tenant", "not the tenant of your token")
                    command = command.model_copy(update={"actor": gate.actor})
                events = self.execute(command, now=at, correlation_id=corr, gate=gate)
            except Rejection as refused:
                rejection = bounded_rejection(refused)
                metrics.rejected(rejection.cmd, rejection.field)
                report.rejected.append((number, rejection.cmd, rejection.field, rejection.reason))
                report.results.append((number, "rejected"))
                try:
                    raw = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raw = None
                self._record_rejection(raw, rejection, at, corr, gate)
                continue
            report.warnings += [(number, w) for e in events for w in getattr(e, "warnings", ())]
            if any(not isinstance(e, CommandHadNoEffect) for e in events):
                report.applied += 1
                report.results.append((number, "applied"))
            else:
                report.unchanged += 1
                report.results.append((number, "unchanged"))
        if self.follow:
            self.catch_up()
        report.position = self.store.max_position()
        report.tenant_positions = {t: self.store.state(t).seq for t in sorted(touched)}
        return report

    # -- projections ----------------------------------------------------------------------------
    def catch_up(self, progress: Progress | None = None) -> int:
        with self._projecting:
            return catch_up(self.store, self.views, self.projector, progress=progress)

    def share_between_threads(self, replay_slot: Callable[[], contextlib.AbstractContextManager[
            object]] | None = None) -> None:
        """Serve many threads at once (the HTTP API): live queries no longer catch up in their
        own thread (they read the committed views and ask the follower thread to catch up),
        and replays hold a `replay_slot` while they fold."""
        self._background = True
        if replay_slot is not None:
            self.replay_slot = replay_slot

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
            catch_up(self.store, self.views, self.projector)
        finally:
            self._projecting.release()
        return True

    def rebuild(self, projection: str | None = None, progress: Progress | None = None,
                parts: int = 1) -> None:
        """Rebuild projections from the log: into new tables swapped in (SQL), or in place.
        `parts` > 1: in that many processes, partitioned by mailbox, where the store allows it
        (PostgreSQL, see runners.rebuild); else in this process."""
        if parts > 1 and self.rebuild_in_parts is not None and self.views.stuck():
            # a stuck tenant (E8) is narrowed to its failing event only by one process: parts
            # would each hold back their own share of it (docs/decisions.md)
            structlog.get_logger("crmsync.rebuild").warning(
                "rebuild_in_one_process", reason="stuck tenants", parts=parts)
            parts = 1
        if parts > 1 and self.rebuild_in_parts is not None:
            names = [projection] if projection else list(PROJECTIONS)
            self.rebuild_in_parts(names, parts, progress)
            self.projector.reset()
            return
        with paused_gc():
            self._rebuild(projection, trimming(progress))

    def _rebuild(self, projection: str | None, progress: Progress | None) -> None:
        names = [projection] if projection else list(PROJECTIONS)
        if self.scratch is not None:
            scratch = self.scratch("__new")
            try:
                with scratch.exclusive():  # one rebuild at a time uses the scratch tables
                    for name in names:
                        scratch.reset(name)
                    builder = Projector(names)
                    build(self.store, scratch, builder, progress=progress)
                    with self.views.exclusive():  # no live writer between last batch and swap
                        catch_up(self.store, scratch, builder)
                        for name in names:
                            scratch.swap_into_live(name)
                        scratch.drop()
            finally:
                scratch.close()
        else:
            with self.views.exclusive():
                for name in names:
                    self.views.reset(name)
                build(self.store, self.views, Projector(names), progress=progress)
        self.projector.reset()

    def verify(self, progress: Progress | None = None) -> dict[str, tuple[str, str]]:
        """Rebuild every projection into scratch views; return {name: (live, rebuilt) checksum}."""
        self.catch_up()
        tables = self.scratch("__verify") if self.scratch is not None else None
        scratch: ViewStore = tables if tables is not None else MemoryViews()
        try:
            for name in PROJECTIONS:
                scratch.reset(name)
            with scratch.exclusive():
                build(self.store, scratch, Projector(), progress=progress)
            return {name: (self.views.checksum(name), scratch.checksum(name))
                    for name in PROJECTIONS}
        finally:
            if tables is not None:
                tables.drop()
                tables.close()

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
        return self.views if at is None else AsOf(self.views, at)

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
