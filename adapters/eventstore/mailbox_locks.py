"""Per-mailbox locks for the sync workers: one worker syncs a mailbox at a time.

`PostgresLocks`: a session advisory lock per (schema, tenant, mailbox) on a connection of its
own — released when the process dies, so a SIGKILLed worker never blocks a mailbox. Waiting is
bounded by `lock_timeout` (the delivery is then retried). `FileLocks`: embedded mode, an `flock`
on one file beside the database (all mailboxes; several embedded worker processes take turns).
psycopg and OS errors become `StoreError`.
"""

from __future__ import annotations

import fcntl
import os
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
            try:
                conn = self._connection()
                conn.execute("SELECT pg_advisory_lock(hashtextextended("
                             "%s || current_setting('search_path'), 0))", (key,))
            except psycopg.Error as exc:
                raise StoreError(f"mailbox lock {mailbox!r}: {exc}") from exc
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended("
                                 "%s || current_setting('search_path'), 0))", (key,))
                except psycopg.Error:
                    conn.close()  # closing the session releases the lock

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FileLocks:
    def __init__(self, path: str) -> None:
        self.path = path
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, tenant: str, mailbox: str) -> Iterator[None]:
        with self._guard:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(f"sync lock {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def close(self) -> None:
        pass
