"""The contact-sync runner's state (adapters.tracking.contact_sync) in the SQLite file of `--db`."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping

from adapters.errors import StoreError
from adapters.tracking.contact_sync import TABLE


class SqliteKeyValues:
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=10, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute(TABLE)
        except sqlite3.Error as exc:
            raise StoreError(f"contact sync state: {exc}") from None

    def get(self, tenant: str, key: str) -> str | None:
        with self._lock:
            try:
                row = self._conn.execute("SELECT value FROM contact_sync_state WHERE tenant = ? "
                                         "AND key = ?", (tenant, key)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"contact sync state: {exc}") from None
        return None if row is None else str(row[0])

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for key, value in items.items():
                        if value is None:
                            self._conn.execute("DELETE FROM contact_sync_state WHERE tenant = ? "
                                               "AND key = ?", (tenant, key))
                        else:
                            self._conn.execute(
                                "INSERT INTO contact_sync_state (tenant, key, value) VALUES "
                                "(?, ?, ?) ON CONFLICT (tenant, key) DO UPDATE SET value = "
                                "excluded.value", (tenant, key, value))
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"contact sync state: {exc}") from None

    def try_lock(self) -> bool:
        return True

    def close(self) -> None:
        self._conn.close()
