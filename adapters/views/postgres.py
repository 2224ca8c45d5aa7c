"""PostgreSQL view store: the same contract as SqliteViews, in the schema the URL selects.

One table per projection, `view_<name><suffix>` (tenant, key, row_key, doc bytea holding the
canonical bytes of `encode_doc`, so checksums equal the other stores'), plus `view_tracking`.
`view_stuck` holds the tenants whose events are held back (E8), per projection (named with the
suffix, like the positions). Text columns use the "C" collation: key order and prefix ranges
are by code point, as in Python.
Rows and positions of a batch are written in one transaction (DELETE of the changed keys, COPY of
their rows, upsert of the positions). Rebuilds write into scratch tables (`suffix`) that
`swap_into_live` renames over the live ones in one transaction, so readers never see a gap.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from adapters.errors import StoreError
from adapters.eventstore.content_keys import configured_master_key
from adapters.eventstore.content_keys_postgres import PostgresContentKeys
from adapters.metrics.prometheus import count_states
from adapters.views.errors import refused
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

_LOCK_KEY = "crmsync.views:"  # advisory lock serialising DDL in one schema
# A server that is down fails a connect at once; one that does not answer (a stuck host, a
# lost network) is given up after CONNECT_TIMEOUT seconds, and a silent peer of an open
# connection is noticed by TCP keepalives in about 25 s instead of never (issue #10 point 10).
CONNECT_TIMEOUT = 3
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                              "keepalives_count": 3}
_MAX_CHAR = 0x10FFFF
# histories whose keys get a version at most events (a mailbox's counters): scanned key by key
MANY_VERSIONS = frozenset({"sync_status"})
# COPY's binary format: its header (signature, flags, extension length) and trailer
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_FIRST_FIELD = struct.Struct(">hi")  # a row's field count (4), its first field's length
_LENGTH = struct.Struct(">i")


def copy_binary(rows: Iterable[tuple[str, str, str, bytes]]) -> bytes:
    """Rows (tenant, key, row_key, doc) as one COPY ... (FORMAT binary) stream: built here in
    one buffer rather than row by row through `Copy.write_row` (a rebuild writes ~7 rows per
    event; the per-row call was most of the COPY's cost in this process)."""
    out = [_COPY_HEADER]
    add = out.append
    first, length = _FIRST_FIELD.pack, _LENGTH.pack
    last_tenant, tenant_bytes = "", b""
    for tenant, key, row_key, doc in rows:
        if tenant is not last_tenant:
            last_tenant, tenant_bytes = tenant, tenant.encode()
        k, r = key.encode(), row_key.encode()
        add(first(4, len(tenant_bytes)))
        add(tenant_bytes)
        add(length(len(k)))
        add(k)
        add(length(len(r)))
        add(r)
        add(length(len(doc)))
        add(doc)
    add(_COPY_TRAILER)
    return b"".join(out)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored: skip to the next scalar
            code = 0xE000
        if code <= _MAX_CHAR:
            return "".join(chars) + chr(code)
    return None


@contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Serialise first starts on one schema: eventsourcing's `CREATE … IF NOT EXISTS` races."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                             **KEEPALIVES) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s || current_setting('search_path')))",
                         ("crmsync.start:",))
            yield  # closing the connection releases the lock
    except psycopg.Error as exc:
        raise StoreError(f"cannot open PostgreSQL: {exc}") from exc


class PostgresViews:
    def __init__(self, url: str, suffix: str = "", content_key: str | None = None) -> None:
        """`content_key`: base64 of the content master key (as the event store's); without
        it content is refused."""
        self.url = url
        self.suffix = suffix
        self._lock = threading.RLock()  # one connection: callers are serialised
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._writer = threading.RLock()
        self._writer_conn: psycopg.Connection[TupleRow] | None = None
        # L2: content in rows sealed with its owner's view key (the keys beside the events)
        self._seal = ViewSealer(lambda: PostgresContentKeys(
            url, self.schema, configured_master_key(content_key)))
        with self._tx("create the view tables") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s || "
                        "current_setting('search_path')))", (_LOCK_KEY,))
            self.schema = self._ensure_schema(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS view_tracking (projection text COLLATE \"C\" "
                        "PRIMARY KEY, position bigint NOT NULL)")
            cur.execute("CREATE TABLE IF NOT EXISTS view_stuck (projection text COLLATE \"C\" "
                        "NOT NULL, tenant text COLLATE \"C\" NOT NULL, position bigint NOT NULL, "
                        "error text NOT NULL, PRIMARY KEY (projection, tenant))")
            for p in (*PROJECTIONS, *HISTORIES.values()):
                cur.execute(self._create(self._table(p)))

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=CONNECT_TIMEOUT, **KEEPALIVES)
        return self._conn

    @contextmanager
    def _tx(self, doing: str) -> Iterator[psycopg.Cursor[TupleRow]]:
        """A cursor inside one transaction; psycopg errors become StoreError."""
        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise StoreError(f"cannot {doing} (PostgreSQL): {exc}") from exc

    @contextmanager
    def _read(self, doing: str) -> Iterator[psycopg.Cursor[TupleRow]]:
        """A cursor for one read statement, in autocommit (a statement is its own snapshot):
        no BEGIN/COMMIT round trips, which were most of a query's time on loopback."""
        with self._lock:
            try:
                conn = self._connect()
                with conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise StoreError(f"cannot {doing} (PostgreSQL): {exc}") from exc

    def close(self) -> None:
        self._seal.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._writer:
            if self._writer_conn is not None:
                self._writer_conn.close()
                self._writer_conn = None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One projector writes these views at a time, across processes: a session advisory
        lock on a connection of its own (released if the process dies)."""
        with self._writer:
            try:
                if self._writer_conn is None or self._writer_conn.closed \
                        or self._writer_conn.broken:
                    self._writer_conn = psycopg.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **KEEPALIVES)
                key = f"crmsync.projector:{self.schema}:{self.suffix}"
                self._writer_conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            except psycopg.Error as exc:
                raise StoreError(f"cannot take the projector lock: {exc}") from exc
            try:
                yield
            finally:
                try:
                    self._writer_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
                except psycopg.Error:
                    self._writer_conn.close()  # closing the session releases the lock

    @staticmethod
    def _ensure_schema(cur: psycopg.Cursor[TupleRow]) -> str:
        """The schema new tables go to: the first of the search path, created when missing."""
        cur.execute("SELECT current_schema()")
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            return str(row[0])
        cur.execute("SELECT current_setting('search_path')")
        row = cur.fetchone()
        names = [n.strip() for n in str(row[0] if row else "").split(",")]
        names = [n[1:-1] if n.startswith('"') else n for n in names if n and n != '"$user"']
        if not names:
            raise StoreError("PostgreSQL: the search path names no schema")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(names[0])))
        return names[0]

    # -- tables ---------------------------------------------------------------------------------
    def _table(self, projection: str) -> str:
        if projection not in PROJECTIONS and projection not in BASES:
            raise StoreError(f"unknown projection {projection!r}")
        return f"view_{projection}{self.suffix}"

    @staticmethod
    def _create(table: str, bulk: bool = False) -> sql.Composed:
        """The table of a projection or history; `bulk`: a build's scratch table, UNLOGGED and
        without its primary key until `bulk_done`."""
        columns = sql.SQL(
            "(tenant text COLLATE \"C\" NOT NULL, key text COLLATE \"C\" NOT NULL, "
            "row_key text COLLATE \"C\" NOT NULL, doc bytea NOT NULL{pk})").format(
            pk=sql.SQL("") if bulk else sql.SQL(", CONSTRAINT {} PRIMARY KEY (tenant, key, "
                                                 "row_key)").format(
                sql.Identifier(f"{table}_pkey")))
        return sql.SQL("CREATE UNLOGGED TABLE {} " if bulk else
                       "CREATE TABLE IF NOT EXISTS {} ").format(sql.Identifier(table)) + columns

    def _id(self, projection: str) -> sql.Identifier:
        return sql.Identifier(self._table(projection))

    # -- the ViewStore contract -----------------------------------------------------------------
    def positions(self) -> dict[str, int]:
        with self._read("read view positions") as cur:
            cur.execute("SELECT projection, position FROM view_tracking")
            found = {p: int(pos) for p, pos in cur.fetchall()}
        return {p: found.get(p + self.suffix, 0) for p in PROJECTIONS}

    def write(self, changes: Changes, positions: Mapping[str, int], *,
              fresh: bool = False, stuck: StuckChanges | None = None) -> None:
        try:
            self._write(changes, positions, fresh, stuck or {})
        except (StoreError, UnicodeError, TypeError, ValueError):
            bad = refused(changes)  # which tenant's row PostgreSQL refused (NUL, surrogate)
            if bad is not None:
                raise bad from None
            raise

    def _write(self, changes: Changes, positions: Mapping[str, int], fresh: bool,
               stuck: StuckChanges) -> None:
        encoded = self._seal.encoded(changes)  # sealed before the transaction
        with self._tx("write views") as cur:
            for projection, keyed in changes.items():
                if not keyed:
                    continue
                table = self._id(projection)
                tenants = [tenant for tenant, _ in keyed]
                keys = [key for _, key in keyed]
                if projection in BASES and not fresh:  # a version of the same time replaced
                    cur.execute(sql.SQL(
                        "DELETE FROM {} AS v USING unnest(%s::text[], %s::text[], %s::text[]) "
                        "AS d(tenant, key, row_key) WHERE v.tenant = d.tenant AND v.key = d.key "
                        "AND v.row_key = d.row_key").format(table),
                        ([r[0] for r in encoded[projection]], [r[1] for r in encoded[projection]],
                         [r[2] for r in encoded[projection]]))
                elif not fresh:  # fresh: the primary key rejects a row that exists
                    cur.execute(sql.SQL(
                        "DELETE FROM {} AS v USING unnest(%s::text[], %s::text[]) AS d(tenant, "
                        "key) WHERE v.tenant = d.tenant AND v.key = d.key").format(table),
                        (tenants, keys))
                with cur.copy(sql.SQL("COPY {} (tenant, key, row_key, doc) FROM STDIN "
                                      "(FORMAT binary)").format(table)) as copy:
                    copy.write(copy_binary(encoded[projection]))
            if positions:
                cur.executemany(
                    "INSERT INTO view_tracking VALUES (%s, %s) ON CONFLICT (projection) "
                    "DO UPDATE SET position = excluded.position",
                    [(p + self.suffix, pos) for p, pos in positions.items()])
            cleared = [(p + self.suffix, t) for (p, t), mark in stuck.items() if mark is None]
            if cleared:
                cur.executemany("DELETE FROM view_stuck WHERE projection = %s AND tenant = %s",
                                cleared)
            marked = [(p + self.suffix, t, mark.position, mark.error)
                      for (p, t), mark in stuck.items() if mark is not None]
            if marked:
                cur.executemany(
                    "INSERT INTO view_stuck VALUES (%s, %s, %s, %s) ON CONFLICT (projection, "
                    "tenant) DO UPDATE SET position = excluded.position, error = excluded.error",
                    marked)

    def forget_tenant(self, tenant: str, projections: Iterable[str]) -> None:
        if not storable_text(tenant):
            return  # no row can hold it
        with self._tx("remove a tenant's rows") as cur:
            for name in [n for p in projections for n in (p, HISTORIES[p])]:
                cur.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(self._id(name)),
                            (tenant,))

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        with self._read("read stuck tenants") as cur:
            cur.execute("SELECT projection, tenant, position, error FROM view_stuck")
            found = cur.fetchall()
        names = {p + self.suffix: p for p in PROJECTIONS}
        return {(names[p], t): Stuck(int(pos), err) for p, t, pos, err in found if p in names}

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        if not (storable_text(tenant) and storable_text(key)):
            return {}  # nothing stored has such a key (E8): not a store failure
        with self._read("read views") as cur:
            cur.execute(sql.SQL("SELECT row_key, doc FROM {} WHERE tenant = %s AND key = %s")
                        .format(self._id(projection)), (tenant, key))
            found = cur.fetchall()
        self._seal.refresh(projection, (_bytes(d[-1]) for d in found))
        return {rk: self._seal.open(projection, tenant, key, rk, orjson.loads(_bytes(doc)))
                for rk, doc in found}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        query = sql.SQL("SELECT key, row_key, doc FROM {} WHERE tenant = %s AND key >= %s"
                        ).format(self._id(projection))
        if not (storable_text(tenant) and storable_text(prefix)):
            return {}
        params: list[str] = [tenant, prefix]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            query += sql.SQL(" AND key < %s")
            params.append(upper)
        with self._read("read views") as cur:
            cur.execute(query + sql.SQL(" ORDER BY key, row_key"), params)
            found = cur.fetchall()
        out: dict[str, Rows] = {}
        self._seal.refresh(projection, (_bytes(d[-1]) for d in found))
        for key, rk, doc in found:
            out.setdefault(key, {})[rk] = self._seal.open(projection, tenant, key, rk,
                                                          orjson.loads(_bytes(doc)))
        return out

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows:
        if not (storable_text(tenant) and storable_text(key)):
            return {}
        with self._read("read past views") as cur:
            cur.execute(sql.SQL("SELECT doc FROM {} WHERE tenant = %s AND key = %s AND row_key "
                                "<= %s ORDER BY row_key DESC LIMIT 1")
                        .format(self._id(HISTORIES[projection])), (tenant, key, moment))
            found = cur.fetchall()
        self._seal.refresh(projection, (_bytes(d[-1]) for d in found))
        return self._seal.opened(projection, tenant, key, _bytes(found[0][0])) if found else {}

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]:
        if not (storable_text(tenant) and storable_text(prefix)):
            return {}
        if projection in MANY_VERSIONS:
            return self._skip_scan_as_of(projection, tenant, prefix, moment)
        query = sql.SQL("SELECT DISTINCT ON (key) key, doc FROM {} WHERE tenant = %s AND "
                        "key >= %s AND row_key <= %s").format(self._id(HISTORIES[projection]))
        params: list[str] = [tenant, prefix, moment]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            query += sql.SQL(" AND key < %s")
            params.append(upper)
        with self._read("read past views") as cur:
            cur.execute(query + sql.SQL(" ORDER BY key, row_key DESC"), params)
            found = cur.fetchall()
        self._seal.refresh(projection, (_bytes(d[-1]) for d in found))
        out = {key: self._seal.opened(projection, tenant, key, _bytes(doc)) for key, doc in found}
        return {key: rows for key, rows in out.items() if rows}

    def _skip_scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                         ) -> dict[str, Rows]:
        """`scan_as_of` by a walk over the distinct keys (one index probe each, then one for
        the key's version): for histories whose keys have thousands of versions each."""
        # no bound: above every key but those starting with two U+10FFFF (no mailbox id does)
        upper = prefix_upper_bound(prefix) or chr(_MAX_CHAR) * 2
        query = sql.SQL(
            "WITH RECURSIVE k(key) AS ("
            " SELECT min(key) FROM {t} WHERE tenant = %(t)s AND key >= %(lo)s AND key < %(hi)s"
            " UNION ALL SELECT (SELECT min(h.key) FROM {t} h WHERE h.tenant = %(t)s"
            " AND h.key > k.key AND h.key < %(hi)s) FROM k WHERE k.key IS NOT NULL)"
            " SELECT k.key, v.doc FROM k CROSS JOIN LATERAL (SELECT doc FROM {t} h"
            " WHERE h.tenant = %(t)s AND h.key = k.key AND h.row_key <= %(m)s"
            " ORDER BY h.row_key DESC LIMIT 1) v WHERE k.key IS NOT NULL ORDER BY k.key"
        ).format(t=self._id(HISTORIES[projection]))
        with self._read("read past views") as cur:
            cur.execute(query, {"t": tenant, "lo": prefix, "hi": upper, "m": moment})
            found = cur.fetchall()
        self._seal.refresh(projection, (_bytes(d[-1]) for d in found))
        out = {key: self._seal.opened(projection, tenant, key, _bytes(doc)) for key, doc in found}
        return {key: rows for key, rows in out.items() if rows}

    def reset(self, projection: str) -> None:
        with self._tx("reset a view") as cur:
            cur.execute(sql.SQL("TRUNCATE {}, {}").format(self._id(projection),
                                                          self._id(HISTORIES[projection])))
            cur.execute("DELETE FROM view_tracking WHERE projection = %s",
                        (projection + self.suffix,))
            cur.execute("DELETE FROM view_stuck WHERE projection = %s",
                        (projection + self.suffix,))

    def checksum(self, projection: str) -> str:
        """Over the live rows and the history's canonical versions (`projections.history`)."""
        found = {}
        with self._tx("checksum a view") as cur:
            for name in (projection, HISTORIES[projection]):
                cur.execute(sql.SQL("SELECT tenant, key, row_key, doc FROM {}")
                            .format(self._id(name)))
                found[name] = cur.fetchall()
        self._seal.refresh()  # sealed content opened: stores with other keys compare (E3)
        opened = {name: [(t, k, rk, self._seal.canonical(name, t, k, rk, _bytes(doc)))
                         for t, k, rk, doc in rows] for name, rows in found.items()}
        return with_history(checksum(opened[projection]),
                            canonical_versions(opened[HISTORIES[projection]]))

    def mailbox_sizes(self) -> dict[str, int]:
        """Messages synced per mailbox id (all tenants), from the sync status rows: what a
        partitioned rebuild balances its parts by."""
        with self._read("read mailbox sizes") as cur:
            cur.execute(sql.SQL("SELECT key, doc FROM {}").format(self._id("sync_status")))
            found = cur.fetchall()
        sizes: dict[str, int] = {}
        for key, doc in found:
            synced = orjson.loads(_bytes(doc)).get("synced")
            if isinstance(synced, int):
                sizes[key] = sizes.get(key, 0) + synced
        return sizes

    def mailbox_states(self) -> dict[tuple[str, bool], int]:
        """Mailboxes by (status, suspect), all tenants (the metrics' gauge)."""
        with self._read("read mailbox states") as cur:
            cur.execute(sql.SQL("SELECT doc FROM {}").format(self._id("sync_status")))
            found = cur.fetchall()
        return count_states(orjson.loads(_bytes(doc)) for (doc,) in found)

    # -- scratch stores -------------------------------------------------------------------------
    def drop(self) -> None:
        """Drop this store's tables (scratch stores only)."""
        if not self.suffix:
            raise StoreError("refusing to drop the live views")
        with self._tx("drop scratch views") as cur:
            for p in (*PROJECTIONS, *HISTORIES.values()):
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._id(p)))
            cur.execute("DELETE FROM view_tracking WHERE projection = ANY(%s)",
                        ([p + self.suffix for p in PROJECTIONS],))
            cur.execute("DELETE FROM view_stuck WHERE projection = ANY(%s)",
                        ([p + self.suffix for p in PROJECTIONS],))

    def bulk_start(self, projections: Iterable[str]) -> None:
        """A build into this scratch store writes its tables whole, once: they are made again
        UNLOGGED (no WAL for the load) and without their primary key (built once in
        `bulk_done` instead of maintained row by row). A PostgreSQL crash meanwhile empties
        them: the build fails and is run again, as any failed build (the live views are not
        touched until `swap_into_live`)."""
        if not self.suffix:
            raise StoreError("bulk loading needs a scratch store")
        with self._tx("prepare scratch views") as cur:
            for name in [n for p in projections for n in (p, HISTORIES[p])]:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._id(name)))
                cur.execute(self._create(self._table(name), bulk=True))

    def bulk_done(self, projections: Iterable[str]) -> None:
        """After a build's load: each table made LOGGED (written to the WAL once, whole), then
        its primary key built over the loaded rows (a key written twice fails here, as it
        failed the write before). Catch-up writes and the swap come after."""
        for name in [n for p in projections for n in (p, HISTORIES[p])]:
            table = self._table(name)
            with self._tx("index scratch views") as cur:
                cur.execute("SELECT relpersistence FROM pg_class WHERE oid = %s::regclass",
                            (sql.Identifier(table).as_string(cur),))
                row = cur.fetchone()
                if row is None or row[0] != "u":
                    continue  # not made by bulk_start: keyed and logged already
                cur.execute(sql.SQL("ALTER TABLE {} SET LOGGED").format(sql.Identifier(table)))
                cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY (tenant, key, "
                                    "row_key)").format(sql.Identifier(table),
                                                       sql.Identifier(f"{table}_pkey")))

    def swap_into_live(self, projection: str) -> None:
        """Replace the live table of `projection` by this scratch store's, in one transaction.

        Readers of the live table wait for the commit, then read the new table (PostgreSQL
        looks the name up again after the lock), so queries keep working during a rebuild.
        """
        if not self.suffix:
            raise StoreError("swap needs a scratch store")
        with self._tx("swap a rebuilt view in") as cur:
            cur.execute("SELECT position FROM view_tracking WHERE projection = %s",
                        (projection + self.suffix,))
            row = cur.fetchone()
            position = int(row[0]) if row else 0
            for name in (projection, HISTORIES[projection]):  # the history goes with its view
                live, new = f"view_{name}", self._table(name)
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(live)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(new), sql.Identifier(live)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    sql.Identifier(live), sql.Identifier(f"{new}_pkey"),
                    sql.Identifier(f"{live}_pkey")))
            cur.execute("INSERT INTO view_tracking VALUES (%s, %s) ON CONFLICT (projection) "
                        "DO UPDATE SET position = excluded.position", (projection, position))
            cur.execute("DELETE FROM view_tracking WHERE projection = %s",
                        (projection + self.suffix,))
            cur.execute("DELETE FROM view_stuck WHERE projection = %s", (projection,))
            cur.execute("UPDATE view_stuck SET projection = %s WHERE projection = %s",
                        (projection, projection + self.suffix))


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return str(value).encode()  # a document edited by hand: checksum whatever is stored
