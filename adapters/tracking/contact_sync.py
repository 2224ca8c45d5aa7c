"""The contact-sync runner's own durable state (issue #5), beside the engine's store: one table
`contact_sync_state(tenant, key, value)` in the SQLite file of `--db` or in the PostgreSQL schema
of the URL (created on first use). Nothing in it is a domain fact — the facts are the commands
the runner issues — it is where the runner is:

- `position`: how far it has read the event log (queued changes executed and acknowledged),
- `cursor/<user>/<folder>`: the Graph delta link of each folder of each user's book,
- `seen/<user>/<external id>`: the content fingerprint and lastModifiedDateTime of the last
  version of a contact that went either way (echo suppression, C4),
- `categories/<user>`: the user's master categories as last seen (renames, C3),
- `done/<change id>`: the provider's answer to a queued change, kept until it is acknowledged
  (a crash between the provider call and the acknowledgement does not call the provider twice).

`put` writes several keys in one transaction; on PostgreSQL `try_lock` makes one runner per
schema the one that executes changes. Library errors become `StoreError`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError

_TABLE = ("CREATE TABLE IF NOT EXISTS contact_sync_state (tenant TEXT NOT NULL, key TEXT NOT NULL, "
          "value TEXT NOT NULL, PRIMARY KEY (tenant, key))")


class KeyValues(Protocol):
    def get(self, tenant: str, key: str) -> str | None: ...

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        """Set (None: delete) every key in one transaction."""

    def try_lock(self) -> bool:
        """Become the one runner of this store (held until `close`); False if another holds
        it. Embedded stores (memory, SQLite) have one runner by construction: always True."""

    def close(self) -> None: ...


class MemoryKeyValues:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}

    def get(self, tenant: str, key: str) -> str | None:
        return self.data.get((tenant, key))

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        for key, value in items.items():
            if value is None:
                self.data.pop((tenant, key), None)
            else:
                self.data[(tenant, key)] = value

    def try_lock(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SqliteKeyValues:
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=10, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute(_TABLE)
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


class PostgresKeyValues:
    """One connection, serialised by a lock; the table lives in the URL's search_path schema
    (created by the engine's view store on first start)."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        try:
            self._conn: psycopg.Connection[TupleRow] = psycopg.connect(
                url, autocommit=True, connect_timeout=10)
            self._conn.execute(_TABLE)
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


def _folder(folder: str | None) -> str:
    return "-" if folder is None else folder


class ContactSyncStore:
    """The typed view of the runner's keys (see the module's docstring)."""

    def __init__(self, backend: KeyValues) -> None:
        self.backend = backend

    def close(self) -> None:
        self.backend.close()

    def try_lock(self) -> bool:
        return self.backend.try_lock()

    def position(self) -> int:
        value = self.backend.get("", "position")
        return 0 if value is None else int(value)

    def set_position(self, position: int) -> None:
        self.backend.put("", {"position": str(position)})

    def cursor(self, tenant: str, user: str, folder: str | None) -> str | None:
        return self.backend.get(tenant, f"cursor/{user}/{_folder(folder)}")

    def set_cursor(self, tenant: str, user: str, folder: str | None, cursor: str | None) -> None:
        self.backend.put(tenant, {f"cursor/{user}/{_folder(folder)}": cursor})

    def seen(self, tenant: str, user: str, external_id: str) -> dict[str, Any] | None:
        value = self.backend.get(tenant, f"seen/{user}/{external_id}")
        return None if value is None else dict(orjson.loads(value))

    def remember(self, tenant: str, user: str, seen: Mapping[str, Mapping[str, Any]]) -> None:
        """Record, per external id, `{"fingerprint", "modified", "by": "us" | "them"}`."""
        self.backend.put(tenant, {f"seen/{user}/{external_id}": orjson.dumps(dict(value)).decode()
                                  for external_id, value in seen.items()})

    def categories(self, tenant: str, user: str) -> dict[str, str] | None:
        value = self.backend.get(tenant, f"categories/{user}")
        return None if value is None else dict(orjson.loads(value))

    def set_categories(self, tenant: str, user: str, categories: Mapping[str, str]) -> None:
        self.backend.put(tenant, {f"categories/{user}": orjson.dumps(dict(categories)).decode()})

    def done(self, tenant: str, change_id: str) -> dict[str, Any] | None:
        value = self.backend.get(tenant, f"done/{change_id}")
        return None if value is None else dict(orjson.loads(value))

    def set_done(self, tenant: str, change_id: str, answer: Mapping[str, Any] | None,
                 seen: tuple[str, str, Mapping[str, Any]] | None = None) -> None:
        """The provider's answer to a change (None: forget it, once acknowledged), together with
        what it wrote (`(user, external id, seen)`), in one transaction."""
        items: dict[str, str | None] = {
            f"done/{change_id}": None if answer is None else orjson.dumps(dict(answer)).decode()}
        if seen is not None:
            user, external_id, value = seen
            items[f"seen/{user}/{external_id}"] = orjson.dumps(dict(value)).decode()
        self.backend.put(tenant, items)
