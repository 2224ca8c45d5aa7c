"""Where the outbox worker keeps its position in the event log, and its one-worker lock.

The position is a low watermark: every outbound request recorded at or before it has been
acknowledged. A restarted worker reads the log after it (and the streams of the tenants it
finds there), so restart cost follows the unacknowledged tail, not the whole history.

Table `outbox_tracking(name PRIMARY KEY, position)` in the engine's own store: the SQLite file of
`--db` or the PostgreSQL URL's schema. `exclusive()` makes a second worker wait (a hot standby):
a PostgreSQL session advisory lock (released when the process dies) or an flock beside the
SQLite file. Library errors are `StoreError`.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError

_TABLE = ("CREATE TABLE IF NOT EXISTS outbox_tracking (name TEXT PRIMARY KEY, "
          "position BIGINT NOT NULL)")
_NAME = "outbox"


class OutboxTracking(Protocol):
    def position(self) -> int: ...

    def save(self, position: int) -> None: ...

    def exclusive(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class MemoryOutboxTracking:
    def __init__(self) -> None:
        self.saved = 0

    def position(self) -> int:
        return self.saved

    def save(self, position: int) -> None:
        self.saved = position

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


class SqliteOutboxTracking:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute(_TABLE)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the outbox position in {path}: {exc}") from None

    def position(self) -> int:
        try:
            row = self.conn.execute("SELECT position FROM outbox_tracking WHERE name=?",
                                    (_NAME,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox position: {exc}") from None
        return int(row[0]) if row else 0

    def save(self, position: int) -> None:
        try:
            self.conn.execute("INSERT INTO outbox_tracking VALUES (?, ?) ON CONFLICT(name) DO "
                              "UPDATE SET position=excluded.position", (_NAME, position))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save the outbox position: {exc}") from None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with open(f"{self.path}.outbox.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        self.conn.close()


class PostgresOutboxTracking:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._run(_TABLE)

    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            with self._connect().cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.Error as exc:
            raise StoreError(f"outbox position (PostgreSQL): {exc}") from None

    def position(self) -> int:
        rows = self._run("SELECT position FROM outbox_tracking WHERE name=%s", (_NAME,))
        return int(str(rows[0][0])) if rows else 0

    def save(self, position: int) -> None:
        self._run("INSERT INTO outbox_tracking VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                  "SET position=excluded.position", (_NAME, position))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """A session advisory lock per schema, on a connection of its own (held while running)."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            conn.execute("SELECT pg_advisory_lock(hashtext('crmsync.outbox:' || "
                         "current_schema()))")
        except psycopg.Error as exc:
            raise StoreError(f"outbox lock (PostgreSQL): {exc}") from None
        try:
            yield
        finally:
            conn.close()  # ends the session: the lock goes with it

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
