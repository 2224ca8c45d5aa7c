"""SQLite view store: one table per projection plus a tracking table, in the event store's file.

Rows and tracking positions of a batch are written in one transaction. Rebuilds write into
`view_<name>__new` and swap it in; `verify` builds `view_<name>__verify` and compares checksums.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import orjson

from adapters.errors import StoreError
from projections.ports import Changes, checksum, encode_doc
from projections.rows import PROJECTIONS, Rows


class SqliteViews:
    def __init__(self, path: str, suffix: str = "") -> None:
        self.suffix = suffix
        self._lock_path = f"{path}.projector{suffix}.lock"
        self._thread_lock = threading.RLock()
        self._held = 0  # re-entrant: depth of exclusive() in this process
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # L2: rows of a deleted user's threads leave no bytes behind in freed pages
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("CREATE TABLE IF NOT EXISTS view_tracking (projection TEXT "
                              "PRIMARY KEY, position INTEGER NOT NULL)")
            for p in PROJECTIONS:
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table(p)} (tenant TEXT NOT NULL, "
                    "key TEXT NOT NULL, row_key TEXT NOT NULL, doc BLOB NOT NULL, "
                    "PRIMARY KEY (tenant, key, row_key)) WITHOUT ROWID")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open views in {path}: {exc}") from exc

    def _table(self, projection: str) -> str:
        if projection not in PROJECTIONS:
            raise StoreError(f"unknown projection {projection!r}")
        return f"view_{projection}{self.suffix}"

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One projector writes these views at a time: a thread lock and a lock file (flock)."""
        with self._thread_lock:
            if self._lock_path.startswith(":memory:") or self._held:
                self._held += 1
                try:
                    yield
                finally:
                    self._held -= 1
                return
            try:
                fh = open(self._lock_path, "a")  # noqa: SIM115 - held across the yield
            except OSError as exc:
                raise StoreError(f"cannot open {self._lock_path}: {exc}") from exc
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
                self._held = 1
                yield
            finally:
                self._held = 0
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    def positions(self) -> dict[str, int]:
        try:
            found = dict(self.conn.execute("SELECT projection, position FROM view_tracking"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read view positions: {exc}") from exc
        return {p: int(found.get(p + self.suffix, 0)) for p in PROJECTIONS}

    def write(self, changes: Changes, positions: Mapping[str, int], *,
              fresh: bool = False) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for projection, keyed in changes.items():
                    table = self._table(projection)
                    if not fresh:  # fresh: the primary key rejects a row that exists
                        self.conn.executemany(f"DELETE FROM {table} WHERE tenant=? AND key=?",
                                              list(keyed))
                    self.conn.executemany(
                        f"INSERT INTO {table} VALUES (?, ?, ?, ?)",
                        [(tenant, key, rk, encode_doc(doc))
                         for (tenant, key), rows in keyed.items() for rk, doc in rows.items()])
                self.conn.executemany(
                    "INSERT INTO view_tracking VALUES (?, ?) ON CONFLICT(projection) "
                    "DO UPDATE SET position=excluded.position",
                    [(p + self.suffix, pos) for p, pos in positions.items()])
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write views: {exc}") from exc

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        cur = self.conn.execute(f"SELECT row_key, doc FROM {self._table(projection)} "
                                "WHERE tenant=? AND key=?", (tenant, key))
        return {rk: orjson.loads(doc) for rk, doc in cur}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        out: dict[str, Rows] = {}
        cur = self.conn.execute(
            f"SELECT key, row_key, doc FROM {self._table(projection)} WHERE tenant=? AND "
            "key >= ? AND key < ? ORDER BY key, row_key", (tenant, prefix, prefix + "\U0010ffff"))
        for key, rk, doc in cur:
            out.setdefault(key, {})[rk] = orjson.loads(doc)
        return out

    def reset(self, projection: str) -> None:
        table = self._table(projection)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute("DELETE FROM view_tracking WHERE projection=?",
                          (projection + self.suffix,))
        self.conn.execute("COMMIT")

    def checksum(self, projection: str) -> str:
        cur = self.conn.execute(f"SELECT tenant, key, row_key, doc FROM {self._table(projection)}")
        # a document edited by hand may come back as text: checksum whatever is stored
        return checksum((t, k, rk, doc if isinstance(doc, bytes) else str(doc).encode())
                        for t, k, rk, doc in cur)

    def drop(self) -> None:
        """Drop this store's tables (scratch stores only)."""
        if not self.suffix:
            raise StoreError("refusing to drop the live views")
        self.conn.execute("BEGIN IMMEDIATE")
        for p in PROJECTIONS:
            self.conn.execute(f"DROP TABLE IF EXISTS {self._table(p)}")
            self.conn.execute("DELETE FROM view_tracking WHERE projection=?", (p + self.suffix,))
        self.conn.execute("COMMIT")

    def swap_into_live(self, projection: str) -> None:
        """Replace the live table of `projection` by this scratch store's, atomically."""
        if not self.suffix:
            raise StoreError("swap needs a scratch store")
        live, new = f"view_{projection}", self._table(projection)
        position = self.positions()[projection]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(f"DROP TABLE {live}")
            self.conn.execute(f"ALTER TABLE {new} RENAME TO {live}")
            self.conn.execute("INSERT INTO view_tracking VALUES (?, ?) ON CONFLICT(projection) "
                              "DO UPDATE SET position=excluded.position", (projection, position))
            self.conn.execute("DELETE FROM view_tracking WHERE projection=?",
                              (projection + self.suffix,))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
