"""Waiting for new events on PostgreSQL: LISTEN/NOTIFY, with polling as the fallback.

eventsourcing's PostgreSQL recorder sends NOTIFY on its channel when events are committed. A
waiter returns when a notification arrives or when the poll interval has passed, whichever comes
first; a lost connection only means the next waits are plain polls until it reconnects, so a
runner can never fall silent.
"""

from __future__ import annotations

import time

import psycopg
from psycopg.rows import TupleRow
from psycopg.sql import SQL, Identifier

from adapters.views.postgres import KEEPALIVES


class PostgresWaiter:
    """LISTENs on the recorder's channel; falls back to polling while the connection is down."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._conn: psycopg.Connection[TupleRow] | None = None
        self.failures = 0

    def _listen(self) -> psycopg.Connection[TupleRow] | None:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3,
                                         **KEEPALIVES)
            self._conn.execute(SQL("LISTEN {0}").format(Identifier(self.channel)))
        except psycopg.Error:
            self.failures += 1
            self._conn = None
        return self._conn

    def wait(self, timeout: float) -> bool:
        """True when a notification arrived, False after `timeout` (or on a lost connection)."""
        conn = self._listen()
        if conn is None:
            time.sleep(timeout)
            return False
        try:
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error:
            self.failures += 1
            conn.close()
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
