"""The one log follower (issue #12): reading the log in batches from a position, the event
filter, waiting only after idle rounds, outages backed off with the session entered again, and
SIGTERM turned into a stop."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.errors import StoreError
from projections.projector import Logged
from runners.services.backoff import Backoff
from runners.services.follower import LogFollower, PollingWaiter, run_until_signalled


@dataclass(frozen=True)
class Item:
    position: int
    seq: int
    event: Any


class Log:
    """Positions with a gap (a rolled-back PostgreSQL insert leaves one); counts its reads."""

    def __init__(self, positions: Sequence[int], kept: set[int] | None = None) -> None:
        self.items = [Item(p, p, f"e{p}") for p in positions]
        self.kept = kept
        self.reads = 0

    def read_log(self, after: int, limit: int) -> list[Item]:
        self.reads += 1
        return [i for i in self.items if i.position > after][:limit]

    def read_log_kept(self, after: int, limit: int, keep: Any) -> tuple[list[Item], int]:
        batch = self.read_log(after, limit)
        last = batch[-1].position if batch else after
        return [i for i in batch if self.kept is None or i.position in self.kept], last


def test_a_follower_reads_to_the_end_in_batches_from_its_position() -> None:
    log = Log([1, 2, 3, 5, 6, 7, 8])
    follower = LogFollower("test", position=1, batch=3)
    batches: list[list[int]] = []
    moved = follower.read(log, lambda b: batches.append([i.position for i in b]))
    assert batches == [[2, 3, 5], [6, 7, 8]] and follower.position == 8 and moved == 7
    assert follower.read(log, lambda b: batches.append([])) == 0 and len(batches) == 2


def test_a_batch_its_handler_failed_on_is_read_again() -> None:
    log = Log([1, 2, 3, 4])
    follower = LogFollower("test", batch=2)
    seen: list[list[int]] = []

    def fail_once(batch: Sequence[Logged]) -> None:
        seen.append([i.position for i in batch])
        if len(seen) == 2:
            raise StoreError("down")

    with pytest.raises(StoreError):
        follower.read(log, fail_once)
    assert follower.position == 2
    follower.read(log, fail_once)
    assert seen == [[1, 2], [3, 4], [3, 4]] and follower.position == 4


def test_a_filtered_follower_moves_past_the_events_it_does_not_decode() -> None:
    log = Log(range(1, 11), kept={4})
    follower = LogFollower("test", batch=4, keep=lambda kind, data: True)
    seen: list[int] = []
    follower.read(log, lambda b: seen.extend(i.position for i in b))
    assert seen == [4] and follower.position == 10


class Waits(PollingWaiter):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.closed = False

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False

    def close(self) -> None:
        self.closed = True


def test_a_follower_waits_only_after_idle_rounds_and_ends_when_stopped() -> None:
    waiter = Waits()
    follower = LogFollower("test", waiter=waiter)
    answers = [0.0, 0.5, 0.0, 0.25]

    def step() -> float:
        wait = answers.pop(0)
        if not answers:
            follower.stop.set()  # no wait once stopped
        return wait

    follower.run(step)
    assert waiter.waits == [0.5] and not answers


def test_an_outage_is_backed_off_and_the_session_entered_again() -> None:
    stop = threading.Event()
    slept: list[float] = []
    follower = LogFollower("test", stop=stop, waiter=Waits(), sleep=slept.append,
                           backoff=Backoff(base=1.0, cap=10.0, jitter=lambda: 0.0))
    sessions: list[str] = []
    outages = [StoreError("down"), StoreError("still down")]

    @contextmanager
    def session() -> Iterator[None]:
        sessions.append("in")
        yield
        sessions.append("out")

    def step() -> float:
        if outages:
            raise outages.pop(0)
        stop.set()
        return 0.0

    follower.run(step, session)
    assert slept == [0.5, 1.0] and sessions == ["in", "in", "in", "out"]
    assert follower.backoff.failures == 0  # reset once a round worked


def test_a_bug_ends_the_follower() -> None:
    follower = LogFollower("test", sleep=lambda _: None)

    def step() -> float:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        follower.run(step)


def test_sigterm_stops_the_follower_closes_its_waiter_and_gives_the_handlers_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    waiter = Waits()
    follower = LogFollower("test", waiter=waiter)
    rounds = [0]

    def step() -> float:
        rounds[0] += 1
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the follower: stop after this round
        return 1.0

    follower.run_until_signalled(step)
    assert rounds == [1] and follower.stop.is_set() and waiter.closed and not waiter.waits
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stop = threading.Event()
    assert run_until_signalled(stop, lambda: os.kill(os.getpid(), signal.SIGINT) or 7) == 7
    assert stop.is_set()
