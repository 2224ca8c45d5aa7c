"""SQLite view store: one table per projection plus a tracking table, in the event store's file.

`view_stuck` holds the tenants whose events are held back (E8), per projection, named with the
store's suffix like the positions. Rows PostgreSQL cannot hold (NUL in a key) are refused here
too, so both stores answer the same.

Rows and tracking positions of a batch are written in one transaction, on the store's one
writer connection; reads go through a connection per thread (WAL: readers run beside the writer
and see committed batches only, never a half-written one). Rebuilds write into
`view_<name>__new` and swap it in; `verify` builds `view_<name>__verify` and compares checksums.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import orjson

from adapters.errors import StoreError
from adapters.eventstore.content_keys import configured_master_key
from adapters.eventstore.content_keys_sqlite import SqliteContentKeys
from adapters.metrics.prometheus import count_states
from adapters.private_files import private_file
from adapters.views.errors import UnstorableViewRow, refused
from adapters.views.seal import ViewSealer
from projections.history import BASES, HISTORIES, canonical_versions, with_history
from projections.ports import (
    Changes,
    Stuck,
    StuckChanges,
    checksum,
    storable_text,
)
from projections.rows import PROJECTIONS, Rows


class SqliteViews:
    def __init__(self, path: str, suffix: str = "", content_key: str | None = None) -> None:
        """`content_key`: base64 of the content master key (as the event store's), else the
        key file beside `path`."""
        self.suffix = suffix
        self._lock_path = f"{path}.projector{suffix}.lock"
        self._thread_lock = threading.RLock()
        self._held = 0  # re-entrant: depth of exclusive() in this process
        self._path = path
        self._local = threading.local()  # this thread's read connection
        # every thread's, by thread: closed by close(), a finished thread's when another opens
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()
        # L2: content in rows sealed with its owner's view key, kept beside the events in this
        # file; an in-memory database keeps nothing, so nothing is sealed there
        memory = path == ":memory:" or "mode=memory" in path
        self._seal = ViewSealer(None if memory else lambda: SqliteContentKeys(
            path, configured_master_key(content_key)), self._deleted)
        try:
            self.conn = sqlite3.connect(private_file(path), timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # L2: rows of a deleted user's threads leave no bytes behind in freed pages
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("CREATE TABLE IF NOT EXISTS view_tracking (projection TEXT "
                              "PRIMARY KEY, position INTEGER NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS view_stuck (projection TEXT NOT NULL, "
                              "tenant TEXT NOT NULL, position INTEGER NOT NULL, error TEXT NOT "
                              "NULL, PRIMARY KEY (projection, tenant))")
            for p in (*PROJECTIONS, *HISTORIES.values()):
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table(p)} (tenant TEXT NOT NULL, "
                    "key TEXT NOT NULL, row_key TEXT NOT NULL, doc BLOB NOT NULL, "
                    "PRIMARY KEY (tenant, key, row_key)) WITHOUT ROWID")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open views in {path}: {exc}") from exc

    def _deleted(self, tenant: str, user: str) -> bool:
        """Whether a user is deleted now (an in-memory database erases their content from the
        history when reading it, L2; a file's destroyed keys do)."""
        doc = self.rows("directory", tenant, f"user:{user}").get(user)
        return doc is not None and doc.get("status") == "deleted"

    def _table(self, projection: str) -> str:
        if projection not in PROJECTIONS and projection not in BASES:
            raise StoreError(f"unknown projection {projection!r}")
        return f"view_{projection}{self.suffix}"

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use); the writer's for an in-memory
        database, which other connections would not see."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._path == ":memory:" or "mode=memory" in self._path:
            return self.conn
        try:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open views in {self._path}: {exc}") from exc
        with self._readers_lock:
            for thread in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(thread).close()
            self._readers[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = list(self._readers.values()), {}
        for conn in readers:
            conn.close()  # check_same_thread=False: closed from whichever thread closes us
        self._local = threading.local()
        self._seal.close()
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
                # held across the yield; 0600 like the views beside it
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
                fh = os.fdopen(os.open(self._lock_path, flags, 0o600), "a")
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
            found = dict(self._reader().execute("SELECT projection, position FROM view_tracking"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read view positions: {exc}") from exc
        return {p: int(found.get(p + self.suffix, 0)) for p in PROJECTIONS}

    def write(self, changes: Changes, positions: Mapping[str, int], *,
              fresh: bool = False, stuck: StuckChanges | None = None) -> None:
        try:
            self._write(changes, positions, fresh, stuck or {})
        except (StoreError, UnicodeError, TypeError, ValueError):
            bad = refused(changes)  # which tenant's row could not be stored
            if bad is not None:
                raise bad from None
            raise

    def _write(self, changes: Changes, positions: Mapping[str, int], fresh: bool,
               stuck: StuckChanges) -> None:
        encoded = self._seal.encoded(changes)  # sealed before the transaction
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for projection, keyed in changes.items():
                    table = self._table(projection)
                    for (tenant, key), rows in keyed.items():  # SQLite would keep a NUL
                        if "\x00" in key or "\x00" in tenant or any("\x00" in rk for rk in rows):
                            raise UnstorableViewRow(tenant, projection, "NUL in a key")
                    insert = "INSERT"
                    if projection in BASES:  # versions are added; one of the same time replaced
                        insert = "INSERT" if fresh else "INSERT OR REPLACE"
                    elif not fresh:  # fresh: the primary key rejects a row that exists
                        self.conn.executemany(f"DELETE FROM {table} WHERE tenant=? AND key=?",
                                              list(keyed))
                    self.conn.executemany(f"{insert} INTO {table} VALUES (?, ?, ?, ?)",
                                          encoded[projection])
                self.conn.executemany(
                    "INSERT INTO view_tracking VALUES (?, ?) ON CONFLICT(projection) "
                    "DO UPDATE SET position=excluded.position",
                    [(p + self.suffix, pos) for p, pos in positions.items()])
                for (projection, tenant), mark in stuck.items():
                    if mark is None:
                        self.conn.execute("DELETE FROM view_stuck WHERE projection=? AND "
                                          "tenant=?", (projection + self.suffix, tenant))
                    else:
                        self.conn.execute(
                            "INSERT INTO view_stuck VALUES (?, ?, ?, ?) ON CONFLICT(projection, "
                            "tenant) DO UPDATE SET position=excluded.position, "
                            "error=excluded.error",
                            (projection + self.suffix, tenant, mark.position, mark.error))
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write views: {exc}") from exc

    def forget_tenant(self, tenant: str, projections: Iterable[str]) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for name in [n for p in projections for n in (p, HISTORIES[p])]:
                self.conn.execute(f"DELETE FROM {self._table(name)} WHERE tenant=?", (tenant,))
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove a tenant's rows: {exc}") from exc

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        try:
            found = self._reader().execute("SELECT projection, tenant, position, error FROM "
                                      "view_stuck").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read stuck tenants: {exc}") from exc
        names = {p + self.suffix: p for p in PROJECTIONS}
        return {(names[p], t): Stuck(int(pos), err) for p, t, pos, err in found if p in names}

    def mailbox_states(self) -> dict[tuple[str, bool], int]:
        """Mailboxes by (status, suspect), all tenants (the metrics' gauge)."""
        try:
            found = self.conn.execute(f"SELECT doc FROM {self._table('sync_status')}").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read mailbox states: {exc}") from exc
        return count_states(orjson.loads(doc) for (doc,) in found)

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        if not (storable_text(tenant) and storable_text(key)):
            return {}  # nothing stored has such a key (E8)
        cur = self._reader().execute(f"SELECT row_key, doc FROM {self._table(projection)} "
                                "WHERE tenant=? AND key=?", (tenant, key))
        found = cur.fetchall()
        self._seal.refresh(projection, (d[-1] for d in found))
        return {rk: self._seal.open(projection, tenant, key, rk, orjson.loads(doc))
                for rk, doc in found}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        out: dict[str, Rows] = {}
        if not (storable_text(tenant) and storable_text(prefix)):
            return out
        cur = self._reader().execute(
            f"SELECT key, row_key, doc FROM {self._table(projection)} WHERE tenant=? AND "
            "key >= ? AND key < ? ORDER BY key, row_key", (tenant, prefix, prefix + "\U0010ffff"))
        found = cur.fetchall()
        self._seal.refresh(projection, (d[-1] for d in found))
        for key, rk, doc in found:
            out.setdefault(key, {})[rk] = self._seal.open(projection, tenant, key, rk,
                                                          orjson.loads(doc))
        return out

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows:
        if not (storable_text(tenant) and storable_text(key)):
            return {}
        history = self._table(HISTORIES[projection])
        found = self._reader().execute(
            f"SELECT doc FROM {history} WHERE tenant=? AND key=? AND row_key<=? "
            "ORDER BY row_key DESC LIMIT 1", (tenant, key, moment)).fetchall()
        self._seal.refresh(projection, (d[-1] for d in found))
        return self._seal.opened(projection, tenant, key, found[0][0]) if found else {}

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]:
        if not (storable_text(tenant) and storable_text(prefix)):
            return {}
        history = self._table(HISTORIES[projection])
        # SQLite: the bare `doc` beside max() is the one of the row holding the maximum
        found = self._reader().execute(
            f"SELECT key, doc, max(row_key) FROM {history} WHERE tenant=? AND key >= ? AND "
            "key < ? AND row_key <= ? GROUP BY key ORDER BY key",
            (tenant, prefix, prefix + "\U0010ffff", moment)).fetchall()
        self._seal.refresh(projection, (d[1] for d in found))
        out = {key: self._seal.opened(projection, tenant, key, doc) for key, doc, _ in found}
        return {key: rows for key, rows in out.items() if rows}

    def reset(self, projection: str) -> None:
        table = self._table(projection)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute(f"DELETE FROM {self._table(HISTORIES[projection])}")
        self.conn.execute("DELETE FROM view_tracking WHERE projection=?",
                          (projection + self.suffix,))
        self.conn.execute("DELETE FROM view_stuck WHERE projection=?",
                          (projection + self.suffix,))
        self.conn.execute("COMMIT")

    def checksum(self, projection: str) -> str:
        """Over the live rows and the history's canonical versions (`projections.history`)."""
        # a document edited by hand may come back as text: checksum whatever is stored; sealed
        # content opened, so stores with different keys (and the in-memory one) compare (E3)
        self._seal.refresh()
        found = {}
        for name in (projection, HISTORIES[projection]):
            cur = self.conn.execute(f"SELECT tenant, key, row_key, doc FROM {self._table(name)}")
            found[name] = [(t, k, rk, self._seal.canonical(
                name, t, k, rk, doc if isinstance(doc, bytes) else str(doc).encode()))
                for t, k, rk, doc in cur.fetchall()]
        return with_history(checksum(found[projection]),
                            canonical_versions(found[HISTORIES[projection]]))

    def drop(self) -> None:
        """Drop this store's tables (scratch stores only)."""
        if not self.suffix:
            raise StoreError("refusing to drop the live views")
        self.conn.execute("BEGIN IMMEDIATE")
        for p in PROJECTIONS:
            self.conn.execute(f"DROP TABLE IF EXISTS {self._table(p)}")
            self.conn.execute(f"DROP TABLE IF EXISTS {self._table(HISTORIES[p])}")
            self.conn.execute("DELETE FROM view_tracking WHERE projection=?", (p + self.suffix,))
            self.conn.execute("DELETE FROM view_stuck WHERE projection=?", (p + self.suffix,))
        self.conn.execute("COMMIT")

    def bulk_start(self, projections: Iterable[str]) -> None:
        """Nothing to prepare: a SQLite build has the file to itself, in one process (the
        PostgreSQL store loads its scratch tables unlogged and unindexed)."""

    def bulk_done(self, projections: Iterable[str]) -> None:
        """See `bulk_start`."""

    def swap_into_live(self, projection: str) -> None:
        """Replace the live table of `projection` by this scratch store's, atomically."""
        if not self.suffix:
            raise StoreError("swap needs a scratch store")
        live, new = f"view_{projection}", self._table(projection)
        position = self.positions()[projection]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for old, rebuilt in ((live, new), (f"view_{HISTORIES[projection]}",
                                               self._table(HISTORIES[projection]))):
                self.conn.execute(f"DROP TABLE {old}")
                self.conn.execute(f"ALTER TABLE {rebuilt} RENAME TO {old}")
            self.conn.execute("INSERT INTO view_tracking VALUES (?, ?) ON CONFLICT(projection) "
                              "DO UPDATE SET position=excluded.position", (projection, position))
            self.conn.execute("DELETE FROM view_tracking WHERE projection=?",
                              (projection + self.suffix,))
            self.conn.execute("DELETE FROM view_stuck WHERE projection=?", (projection,))
            self.conn.execute("UPDATE view_stuck SET projection=? WHERE projection=?",
                              (projection, projection + self.suffix))
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
