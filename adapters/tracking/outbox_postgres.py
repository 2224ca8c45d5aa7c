"""The outbox worker's position (adapters.tracking.outbox) in the PostgreSQL URL's schema; its
one-worker lock is a session advisory lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError
from adapters.tracking.outbox import NAME, TABLE


class PostgresOutboxTracking:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._run(TABLE)

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
        rows = self._run("SELECT position FROM outbox_tracking WHERE name=%s", (NAME,))
        return int(str(rows[0][0])) if rows else 0

    def save(self, position: int) -> None:
        self._run("INSERT INTO outbox_tracking VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                  "SET position=excluded.position", (NAME, position))

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
