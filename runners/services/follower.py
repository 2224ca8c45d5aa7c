"""Following the event log: the one loop of every log follower (issue #12).

The projection runner, the outbox, contact sync, the sync workers' mailbox directory and the
credential erasure each read the log after a position of their own, in batches, some decoding
only the event kinds they fold. The long-running ones (projections, outbox, contacts) repeat a
round until stopped, waiting on a `Waiter` (NOTIFY on PostgreSQL, a poll otherwise) when the
round found nothing to do, and outlive store outages with the capped backoff of
`runners.services.backoff` (issue #10 point 10). `run_until_signalled` is the one place that
turns SIGTERM and SIGINT into a stop.

Why not eventsourcing's `ProjectionRunner`: docs/decisions/architecture.md, "One log follower
(issue #12)".
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, TypeVar

import structlog

from domain.events import DomainEvent
from projections.projector import Logged
from runners.services.backoff import Backoff, attempt

T = TypeVar("T")
# Decode this stored event? (its class, its stored JSON): see EventStore.read_log_kept.
Keep = Callable[[type[DomainEvent], bytes], bool]
Session = Callable[[], AbstractContextManager[object]]


class Waiter(Protocol):
    """Waits for new events: True when woken by one, False when `timeout` passed."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class LogReader(Protocol):
    """The part of the event store (adapters.eventstore.store.EventStore) a follower reads."""

    def read_log(self, after: int, limit: int) -> Sequence[Logged]: ...

    def read_log_kept(self, after: int, limit: int, keep: Keep | None
                      ) -> tuple[Sequence[Logged], int]: ...


class PollingWaiter:
    """Waits the poll interval (SQLite, in memory: nothing to listen to); `wake` ends a wait
    early. PostgreSQL's waiter listens: adapters.eventstore.waiter_postgres."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, timeout: float) -> bool:
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.set()


@contextmanager
def _no_session() -> Iterator[None]:
    yield


@dataclass
class LogFollower:
    """A reader of the event log from `position` (the last position handled), `batch` events at
    a time, decoding only the events `keep` accepts (all without it); and the loop that repeats
    a round until `stop`, waiting on `waiter` between idle rounds."""

    name: str  # what it does, in log lines ("store_unavailable", doing=name)
    position: int = 0
    batch: int = 1000
    keep: Keep | None = None
    waiter: Waiter = field(default_factory=PollingWaiter)
    stop: threading.Event = field(default_factory=threading.Event)
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], object] | None = None  # between outages; default `stop.wait`
    log: structlog.typing.FilteringBoundLogger = field(
        default_factory=lambda: structlog.get_logger("crmsync.follower"))

    def read(self, log: LogReader, handle: Callable[[Sequence[Logged]], object]) -> int:
        """Hand each batch after `position` to `handle` until the log's end, moving `position`
        past a batch once `handle` returned (a batch it failed on is read again next time).
        Returns how many log positions it moved."""
        moved = 0
        while True:
            if self.keep is None:
                batch = log.read_log(self.position, self.batch)
                last = batch[-1].position if batch else self.position
            else:
                batch, last = log.read_log_kept(self.position, self.batch, self.keep)
            if batch:
                handle(batch)
            stepped, self.position = last - self.position, last
            moved += stepped
            if stepped < self.batch:  # the end (a gap in the positions costs one more read)
                return moved

    def run(self, step: Callable[[], float], session: Session | None = None) -> None:
        """Until `stop`: call `step` (one round) and wait on the waiter for as long as it
        returns (0: go on at once). The rounds run inside `session()` (a lock, opened stores),
        entered again after each outage: an outage is logged, backed off, and the follower
        starts over; any other error ends it."""
        sleep = self.sleep or self.stop.wait

        def rounds() -> None:
            with (session or _no_session)():
                while not self.stop.is_set():
                    wait = step()
                    if self.backoff.failures:
                        self.log.info("store_reconnected", doing=self.name,
                                      failures=self.backoff.failures)
                        self.backoff.reset()
                    if wait > 0 and not self.stop.is_set():
                        self.waiter.wait(wait)

        while not self.stop.is_set():
            attempt(rounds, what=self.name, backoff=self.backoff, sleep=sleep, log=self.log)

    def run_until_signalled(self, step: Callable[[], float],
                            session: Session | None = None) -> None:
        """`run` until SIGTERM or SIGINT (the current round finishes); then close the waiter."""
        run_until_signalled(self.stop, lambda: self.run(step, session), self.waiter.close)


def run_until_signalled(stop: threading.Event, main: Callable[[], T],
                        close: Callable[[], object] | None = None) -> T:
    """`main()` with SIGTERM and SIGINT setting `stop` (which `main` watches), then `close()`.
    The previous handlers are back once it returns."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return main()
    finally:
        try:
            if close is not None:
                close()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
