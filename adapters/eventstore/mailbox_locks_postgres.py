"""Per-mailbox locks (adapters.eventstore.mailbox_locks) as PostgreSQL session advisory locks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError


class PostgresLocks:
    def __init__(self, url: str, *, wait: float = 60.0) -> None:
        self.url, self.wait = url, wait
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._guard = threading.Lock()

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._conn.execute(f"SET lock_timeout = '{int(self.wait * 1000)}ms'")
        return self._conn

    @contextmanager
    def hold(self, tenant: str, mailbox: str) -> Iterator[None]:
        key = f"crmsync.sync:{len(tenant)}:{tenant}:{mailbox}"
        with self._guard:
            conn = self._lock(key, mailbox)
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended("
                                 "%s || current_setting('search_path'), 0))", (key,))
                except psycopg.Error:
                    conn.close()  # closing the session releases the lock

    def _lock(self, key: str, mailbox: str) -> psycopg.Connection[TupleRow]:
        """The session holding the lock `key`; a session the server had ended (a restart since
        the last delivery) held no lock any more: the lock is taken again on a new one."""
        for again in (True, False):
            try:
                conn = self._connection()
                conn.execute("SELECT pg_advisory_lock(hashtextextended("
                             "%s || current_setting('search_path'), 0))", (key,))
                return conn
            except psycopg.Error as exc:
                if not (again and self._conn is not None and self._conn.broken):
                    raise StoreError(f"mailbox lock {mailbox!r}: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
