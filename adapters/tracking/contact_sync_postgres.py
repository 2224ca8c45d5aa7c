"""The contact-sync runner's state (adapters.tracking.contact_sync) in the PostgreSQL URL's
schema, with the advisory lock that makes one runner per schema execute changes."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError
from adapters.tracking.contact_sync import TABLE


class PostgresKeyValues:
    """One connection, serialised by a lock; the table lives in the URL's search_path schema
    (created by the engine's view store on first start)."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        try:
            self._conn: psycopg.Connection[TupleRow] = psycopg.connect(
                url, autocommit=True, connect_timeout=10)
            self._conn.execute(TABLE)
        except psycopg.Error as exc:
            raise StoreError(f"contact sync state: {type(exc).__name__}: {exc}") from None

    def get(self, tenant: str, key: str) -> str | None:
        with self._lock:
            try:
                row = self._conn.execute("SELECT value FROM contact_sync_state WHERE tenant = %s "
                                         "AND key = %s", (tenant, key)).fetchone()
            except psycopg.Error as exc:
                raise StoreError(f"contact sync state: {type(exc).__name__}: {exc}") from None
        return None if row is None else str(row[0])

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        with self._lock:
            try:
                with self._conn.transaction():
                    for key, value in items.items():
                        if value is None:
                            self._conn.execute("DELETE FROM contact_sync_state WHERE tenant = %s "
                                               "AND key = %s", (tenant, key))
                        else:
                            self._conn.execute(
                                "INSERT INTO contact_sync_state (tenant, key, value) VALUES "
                                "(%s, %s, %s) ON CONFLICT (tenant, key) DO UPDATE SET value = "
                                "excluded.value", (tenant, key, value))
            except psycopg.Error as exc:
                raise StoreError(f"contact sync state: {type(exc).__name__}: {exc}") from None

    def try_lock(self) -> bool:
        """A session advisory lock per schema: one `run contacts` executes the changes."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended('crmsync.contacts.' || "
                    "current_schema(), 0))").fetchone()
            except psycopg.Error as exc:
                raise StoreError(f"contact sync state: {type(exc).__name__}: {exc}") from None
        return bool(row and row[0])

    def close(self) -> None:
        self._conn.close()
