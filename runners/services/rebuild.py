"""Rebuilding projections from the event log (`crmsync rebuild`, `crmsync verify`).

`Rebuilding` is the Engine's part: one process builds into scratch tables swapped in (SQL) or in
place (memory). On PostgreSQL, `rebuild_in_parts` partitions it by mailbox over several processes
(`crmsync rebuild --parts N`): one process folds a million events on one core; the fold and the
rows from the final state are independent per mailbox once the tenant-wide events are folded by
everyone (`projections.partition`). The coordinator (the `crmsync rebuild` process) resets the
scratch tables, spreads the mailboxes over the parts by their message counts in the live sync
status (`partition.balanced`; mailboxes it does not know go by hash) and starts N part processes.
Each reads the log up to the same target position, decodes only its own mailboxes' mail, and writes
its keys into the shared scratch tables (fresh writes: a key written twice fails the build). When
every part has built, the coordinator takes the live writer lock, tells the parts to catch up to
the log's end (the events appended meanwhile), then sets the positions and swaps the tables in, as
the one-process rebuild does. A part that fails or dies fails the rebuild with positions still 0;
it is simply run again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

import structlog

from adapters.errors import StoreError
from adapters.eventstore.store import CONTENT_KEY, EventStore
from adapters.gc_pause import paused_gc
from adapters.heap import release_freed
from adapters.views.memory import MemoryViews
from projections.build import build
from projections.partition import balanced
from projections.ports import ViewStore
from projections.projector import Projector, catch_up
from projections.rows import PROJECTIONS

Progress = Callable[[int, int], None]


def trimming(progress: Progress | None, every: int = 50) -> Progress:
    """`progress`, also returning freed memory to the system every `every` batches: a rebuild's
    reader and writer threads churn through buffers that glibc would otherwise keep."""
    calls = [0]

    def report(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] % every == 0:
            release_freed()
        if progress is not None:
            progress(done, total)

    return report


class ScratchViews(ViewStore, Protocol):
    """A view store in scratch tables (rebuild, verify) next to the live ones."""

    def drop(self) -> None: ...

    def swap_into_live(self, projection: str) -> None: ...

    def close(self) -> None: ...

    def bulk_start(self, projections: Iterable[str]) -> None:
        """Before a build's load into these (reset) tables: cheaper tables to load."""

    def bulk_done(self, projections: Iterable[str]) -> None:
        """After the load, before catch-up writes and the swap: tables as the live ones."""


ScratchFactory = Callable[[str], ScratchViews]  # table suffix -> scratch store


class Rebuilding(ABC):
    """The Engine's rebuild and verify: what it needs from the rest of the Engine is declared
    here."""

    _store: EventStore
    _views: ViewStore
    scratch: ScratchFactory | None
    rebuild_in_parts: Callable[[list[str], int, Progress | None], None] | None
    projector: Projector

    @abstractmethod
    def catch_up(self, progress: Progress | None = None) -> int:
        """The Engine's (runners.services.engine): bring the views up to the log."""

    def rebuild(self, projection: str | None = None, progress: Progress | None = None,
                parts: int = 1) -> None:
        """Rebuild projections from the log: into new tables swapped in (SQL), or in place.
        `parts` > 1: in that many processes, partitioned by mailbox, where the store allows it
        (PostgreSQL, see `rebuild_in_parts`); else in this process."""
        if parts > 1 and self.rebuild_in_parts is not None and self._views.stuck():
            # a stuck tenant (E8) is narrowed to its failing event only by one process: parts
            # would each hold back their own share of it (docs/decisions/events-and-projections.md)
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
                    scratch.bulk_start(names)
                    builder = Projector(names)
                    build(self._store, scratch, builder, progress=progress)
                    scratch.bulk_done(names)  # outside the live lock: it takes a while
                    with self._views.exclusive():  # no live writer between last batch and swap
                        catch_up(self._store, scratch, builder)
                        for name in names:
                            scratch.swap_into_live(name)
                        scratch.drop()
            finally:
                scratch.close()
        else:
            with self._views.exclusive():
                for name in names:
                    self._views.reset(name)
                build(self._store, self._views, Projector(names), progress=progress)
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
                build(self._store, scratch, Projector(), progress=progress)
            return {name: (self._views.checksum(name), scratch.checksum(name))
                    for name in PROJECTIONS}
        finally:
            if tables is not None:
                tables.drop()
                tables.close()


PROGRESS_EVERY = 25  # batches between progress reports of a part
_Message = tuple[str, int, str]  # (kind, number, text)


def _part_main(store_env: dict[str, str], url: str, suffix: str, names: list[str], index: int,
               count: int, target: int, batch_size: int, assigned: dict[str, int],
               conn: Connection) -> None:
    """One part, in its own process: build up to `target`, wait, catch up to the end given."""
    from adapters.views.postgres import PostgresViews, startup_lock
    from projections.build import extend
    from projections.partition import Partition

    try:
        with startup_lock(url):  # opening runs CREATE … IF NOT EXISTS: one process at a time
            store = EventStore(store_env)
            views = PostgresViews(url, suffix=suffix, content_key=store_env.get(CONTENT_KEY))
        try:
            projector = Projector(names, partition=Partition(index, count, assigned))
            batches = [0]

            def report(done: int, total: int) -> None:
                batches[0] += 1
                if batches[0] % PROGRESS_EVERY == 0:
                    conn.send(("progress", done, ""))

            with paused_gc():
                read = build(store, views, projector, batch_size=batch_size, target=target,
                             set_positions=False, progress=trimming(report))
                conn.send(("built", read, ""))
                kind, end, _ = conn.recv()
                if kind != "extend":
                    return
                read += extend(store, views, projector, end, batch_size=batch_size)
            conn.send(("done", read, ""))
        finally:
            views.close()
            store.app.close()
    except BaseException as exc:  # reported to the coordinator, which fails the rebuild
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with contextlib.suppress(OSError):
            conn.send(("failed", index, detail))
        raise SystemExit(1) from None


class Parts:
    """The part processes of one rebuild and their pipes."""

    def __init__(self, count: int, start: Callable[[int, Connection], Any]) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork: the coordinator has threads
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for index in range(count):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=start, args=(index, theirs), daemon=True,
                               name=f"crmsync-rebuild-part-{index}")
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)

    def wait_all(self, kind: str, on_progress: Callable[[int, int], None] | None = None
                 ) -> list[int]:
        """Wait for every part to send `kind`; raise StoreError when one fails or dies."""
        got: dict[int, int] = {}
        while len(got) < len(self.pipes):
            for index, pipe in enumerate(self.pipes):
                if index in got:
                    continue
                if not pipe.poll(0.05):
                    if not self.procs[index].is_alive():
                        self._fail(index, f"exited with code {self.procs[index].exitcode}")
                    continue
                try:
                    message: _Message = pipe.recv()
                except EOFError:
                    self._fail(index, "exited without a word")
                what, number, text = message
                if what == kind:
                    got[index] = number
                elif what == "progress" and on_progress is not None:
                    on_progress(index, number)
                elif what == "failed":
                    self._fail(index, text)
        return [got[i] for i in range(len(self.pipes))]

    def send(self, message: _Message) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def _fail(self, index: int, reason: str) -> None:
        self.stop()
        raise StoreError(f"rebuild part {index + 1} of {len(self.pipes)} failed: {reason}; "
                         "nothing was swapped in, run the rebuild again")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(10)
        for pipe in self.pipes:
            pipe.close()


def rebuild_in_parts(store: EventStore, views: ViewStore, scratch_tables: ScratchFactory,
                     url: str, store_env: dict[str, str], names: Sequence[str], count: int,
                     progress: Progress | None = None, *, batch_size: int = 1000) -> int:
    """Rebuild `names` of the live `views` into scratch tables with `count` part processes
    reading `store`, and swap them in. Returns the number of events the parts read together."""
    suffix = "__new"
    scratch: ScratchViews = scratch_tables(suffix)
    try:
        with scratch.exclusive():  # one rebuild at a time uses the scratch tables
            for name in names:
                scratch.reset(name)
            scratch.bulk_start(names)
            target = store.max_position()
            sizes = getattr(views, "mailbox_sizes", None)
            assigned = balanced(sizes(), count) if sizes is not None else {}
            at = [0] * count

            def moved(index: int, position: int) -> None:
                at[index] = position
                if progress is not None:
                    progress(min(at), target)

            parts = Parts(count, _Start(store_env, url, suffix, list(names), count, target,
                                        batch_size, assigned))
            try:
                parts.wait_all("built", moved)
                scratch.bulk_done(names)  # outside the live lock: it takes a while
                with views.exclusive():  # no live writer between catch-up and swap
                    end = store.max_position()
                    parts.send(("extend", end, ""))
                    read = sum(parts.wait_all("done"))  # every event each part read
                    scratch.write({}, {name: end for name in names})
                    for name in names:
                        scratch.swap_into_live(name)
                    scratch.drop()
            finally:
                parts.stop()
            if progress is not None:
                progress(target, target)
            return read
    finally:
        scratch.close()


class _Start:
    """The picklable entry point of a part process (spawned: it imports what it needs)."""

    def __init__(self, store_env: dict[str, str], url: str, suffix: str, names: list[str],
                 count: int, target: int, batch_size: int, assigned: dict[str, int]) -> None:
        self.args = (store_env, url, suffix, names, count, target, batch_size, assigned)

    def __call__(self, index: int, conn: Connection) -> None:
        store_env, url, suffix, names, count, target, batch_size, assigned = self.args
        _part_main(store_env, url, suffix, names, index, count, target, batch_size, assigned,
                   conn)
