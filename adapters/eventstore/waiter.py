"""Waiting for new events where nothing announces them (SQLite, in memory): polling. On
PostgreSQL the runners LISTEN instead (waiter_postgres)."""

from __future__ import annotations

import threading


class PollingWaiter:
    """Waits the poll interval (SQLite, in-memory); `wake` ends a wait early."""

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
