"""Reconnecting instead of exiting: capped exponential backoff with jitter (issue #10 point 10).

A runner whose store (PostgreSQL) or queue (NATS) is unreachable logs the failure, waits
`Backoff.next_delay()` — base·2^(n-1) capped at `cap`, drawn between half and the whole of it
so that processes restarted together do not reconnect in lockstep — and tries again; the first
success resets it. The wait is `stop.wait`, so SIGTERM ends a runner mid-backoff at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from adapters.errors import DeliveryStoreError, StoreError

T = TypeVar("T")
# What a runner outlives: its stores and queues failing. Anything else is a bug and still ends it.
OUTAGES: tuple[type[Exception], ...] = (StoreError, DeliveryStoreError)


@dataclass
class Backoff:
    """Capped exponential backoff with "equal jitter"; `failures` counts the current run."""

    base: float = 0.25
    cap: float = 5.0  # an outage's end is noticed within this; one try costs a connect attempt
    jitter: Callable[[], float] = field(default=random.random)  # uniform in [0, 1)
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        return float(ceiling / 2 + ceiling / 2 * self.jitter())

    def reset(self) -> None:
        self.failures = 0


def attempt(step: Callable[[], T], *, what: str, backoff: Backoff,
            sleep: Callable[[float], object], log: structlog.typing.FilteringBoundLogger,
            outages: tuple[type[Exception], ...] = OUTAGES) -> tuple[bool, T | None]:
    """Run `step` once. On an outage log it, sleep the next backoff delay and return
    (False, None); on success log the recovery (after failures) and return (True, result)."""
    try:
        result = step()
    except outages as exc:
        delay = backoff.next_delay()
        log.warning("store_unavailable", doing=what, failures=backoff.failures,
                    retry_in=round(delay, 3), error=str(exc))
        sleep(delay)
        return False, None
    if backoff.failures:
        log.info("store_reconnected", doing=what, failures=backoff.failures)
        backoff.reset()
    return True, result


def keep_trying(step: Callable[[], T], *, what: str, stop: threading.Event,
                backoff: Backoff | None = None,
                log: structlog.typing.FilteringBoundLogger | None = None,
                sleep: Callable[[float], object] | None = None) -> T | None:
    """`step` until it succeeds (its result) or `stop` is set (None), backing off between
    outages. For a runner's start: opening its stores while PostgreSQL is still down."""
    backoff = backoff or Backoff()
    log = log or structlog.get_logger("crmsync.backoff")
    sleep = sleep or stop.wait
    while not stop.is_set():
        ok, result = attempt(step, what=what, backoff=backoff, sleep=sleep, log=log)
        if ok:
            return result
    return None
