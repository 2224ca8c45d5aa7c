"""Content keys (adapters.eventstore.content_keys) in the embedded SQLite file, beside the events.

The connection runs with `PRAGMA secure_delete=ON`, so a destroyed key's page space is zeroed,
and after a destruction checkpoints the WAL with TRUNCATE, so no copy of the page stays in the
`-wal` file either (L2: the key bytes are gone from the files, not only from the table).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from typing import Any

from adapters.errors import StoreError
from adapters.eventstore.content_keys import TABLE, ContentKeys, key_file_master_key


class SqliteContentKeys(ContentKeys):
    def __init__(self, path: str, master: bytes | None = None) -> None:
        """`master`: the configured master key; None: the key file beside `path`."""
        super().__init__(master or key_file_master_key(path))
        self._db_lock = threading.Lock()  # one connection, used by the server's threads
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10)
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.create_function("crmsync_key_hash", 2, _key_hash, deterministic=True)
            self._db.execute(TABLE.format(blob="BLOB"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the content keys in {path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._db_lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"content keys: {exc}") from exc

    def _insert(self, tenant: str, user: str, wrapped: bytes) -> None:
        self._run("INSERT OR IGNORE INTO content_keys VALUES (?, ?, ?, NULL, NULL)",
                  (tenant, user, wrapped))

    def _tombstone(self, tenant: str, user: str, at: str) -> bool:
        with self._db_lock:
            return self._tombstone_locked(tenant, user, at)

    def _tombstone_locked(self, tenant: str, user: str, at: str) -> bool:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute("DELETE FROM content_keys WHERE tenant = ? AND user_id = ? "
                                    "AND wrapped IS NOT NULL", (tenant, user)).rowcount
            self._db.execute("INSERT OR IGNORE INTO content_keys VALUES (?, ?, NULL, ?, NULL)",
                             (tenant, user, at))
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot destroy the content key of {tenant}/{user}: {exc}") from exc
        return gone > 0

    def _destroyed_fingerprint(self) -> object:
        # the number and a sum of hashes (as on PostgreSQL): a change of the set, not only of
        # its size, drops the cached keys
        return tuple(self._run("SELECT count(*), coalesce(sum(crmsync_key_hash(tenant, user_id)),"
                               " 0) FROM content_keys WHERE destroyed_at IS NOT NULL")[0])

    def close(self) -> None:
        self._db.close()


def _key_hash(tenant: str, user: str) -> int:
    # 40 bits: SQLite's integer sum cannot overflow below 2**23 destroyed keys
    digest = hashlib.blake2b(f"{tenant}\x1f{user}".encode(), digest_size=5).digest()
    return int.from_bytes(digest, "big")
