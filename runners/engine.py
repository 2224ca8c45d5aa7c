"""The embedded engine: event store + views + projector, composed from a configuration.

`Engine` applies commands (each on its own transaction, rejections recorded when the tenant
exists), keeps the views caught up, and answers queries live or as of a past domain time.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from adapters import metrics_prometheus as metrics
from adapters.credential_store import CredentialStore, SqliteCredentialStore
from adapters.errors import ConcurrencyConflict
from adapters.event_store import EventStore
from adapters.gc_pause import paused_gc
from adapters.memory_views import MemoryViews
from adapters.sqlite_views import SqliteViews
from domain.commands import Command, parse_command
from domain.decide import decide, rejection_event
from domain.errors import Rejection
from domain.events import CommandHadNoEffect, DomainEvent
from domain.state import TenantState, evolve
from projections import queries
from projections.ports import ViewReader, ViewStore
from projections.projector import Projector, ReplayLog, build, catch_up
from projections.rows import PROJECTIONS
from runners.credentials import after_append, check_ready

Progress = Callable[[int, int], None]


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


class Engine:
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
        # Embedded: commands and queries bring the views up to date in this process. False when
        # projection runners run as processes of their own (`crmsync run projections`).
        self.follow = True

    @classmethod
    def open_in_memory(cls) -> Engine:
        return cls(EventStore.in_memory(), MemoryViews())

    @classmethod
    def open_sqlite(cls, path: str) -> Engine:
        return cls(EventStore.sqlite(path), SqliteViews(path), path,
                   credentials=SqliteCredentialStore(path))

    def close(self) -> None:
        close = getattr(self.views, "close", None)
        if callable(close):
            close()
        if self.credentials is not None:
            self.credentials.close()
        self.store.close()

    # -- commands -------------------------------------------------------------------------------
    def execute(self, command: Command, *, now: datetime, correlation_id: str,
                gate: Gate | None = None) -> list[DomainEvent]:
        """Decide and append one command; retried on a concurrent append. Raises Rejection.

        Then the credential store follows the events (`runners.credentials.after_append`); its
        failure raises CredentialStoreError after the events were appended.
        """
        check_ready(self.credentials, command)
        for _ in range(5):
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
        append)."""
        if not commands:
            return []
        tenant = commands[0].tenant
        if any(cmd.tenant != tenant for cmd in commands):
            raise ValueError("a batch holds the commands of one tenant")
        for attempt in range(20):  # workers of two mailboxes of one tenant collide often
            if attempt:
                time.sleep(random.uniform(0, 0.02 * attempt))
            state = self.store.state(tenant)
            base = state.seq
            results: list[list[DomainEvent]] = []
            try:
                for cmd in commands:
                    try:
                        events = decide(state, cmd, now=now, correlation_id=correlation_id)
                    except Rejection as rejection:
                        events = [rejection_event(state, cmd.cmd, rejection, now=now,
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
            if parsed is not None and parsed.tzinfo is not None:
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
        return catch_up(self.store, self.views, self.projector, progress=progress)

    def rebuild(self, projection: str | None = None, progress: Progress | None = None,
                parts: int = 1) -> None:
        """Rebuild projections from the log: into new tables swapped in (SQL), or in place.
        `parts` > 1: in that many processes, partitioned by mailbox, where the store allows it
        (PostgreSQL, see runners.rebuild); else in this process."""
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
        """Live views (caught up first), or the tenant's state replayed up to domain time `at`."""
        if at is None:
            if self.follow:
                self.catch_up()
            return self.views
        events = []
        for seq, event in self.store.tenant_events(tenant):
            if event.occurred_at > at:
                break
            events.append((seq, event))
        replayed = MemoryViews()  # the same projector as live, over the stream up to `at`
        catch_up(ReplayLog(events), replayed, Projector(), batch_size=10_000)
        return replayed

    def query_timeline(self, tenant: str, viewer: str, record: str, at: datetime | None = None
                       ) -> list[dict[str, Any]]:
        return queries.timeline(self.reader(tenant, at), tenant, viewer, record)

    def query_mailbox(self, tenant: str, viewer: str, label: str | None = None,
                      at: datetime | None = None) -> list[dict[str, Any]]:
        return queries.mailbox(self.reader(tenant, at), tenant, viewer, label)

    def query_thread(self, tenant: str, viewer: str, thread: str, at: datetime | None = None
                     ) -> dict[str, Any]:
        from runners.audit import thread_views  # `at`: fold one thread, not the tenant's views

        return queries.thread(thread_views(self, tenant, thread, at), tenant, viewer, thread)

    def query_explain(self, tenant: str, viewer: str, thread: str, record: str | None = None,
                      at: datetime | None = None) -> dict[str, Any]:
        from runners.audit import thread_views

        return queries.explain(thread_views(self, tenant, thread, at), tenant, viewer, thread,
                               record)

    def query_records(self, tenant: str, viewer: str, email: str | None = None,
                      at: datetime | None = None) -> list[dict[str, Any]]:
        return queries.records(self.reader(tenant, at), tenant, viewer, email)

    def query_status(self, tenant: str, viewer: str, mailbox: str | None = None,
                     at: datetime | None = None) -> list[dict[str, Any]]:
        return queries.sync_status(self.reader(tenant, at), tenant, viewer, mailbox)

    def query_contact(self, tenant: str, viewer: str, record: str, at: datetime | None = None
                      ) -> dict[str, Any]:
        return queries.contact(self.reader(tenant, at), tenant, viewer, record)
