"""Content keys (adapters.eventstore.content_keys) in the PostgreSQL schema of the events.

Needs `$CRMSYNC_CONTENT_KEY` (the `master` it is given): there is no file beside a server to
keep a master key in, so without it content is refused (StoreError), as the credential store
refuses credentials. A destroyed key's tuple stays in the table's pages until VACUUM and in every
earlier backup and WAL archive: see docs/decisions/audit-and-erasure.md for what an operator
has to do.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from adapters.errors import StoreError
from adapters.eventstore.content_keys import KEY_ENV, TABLE, ContentKeys


class PostgresContentKeys(ContentKeys):
    def __init__(self, conninfo: str, schema: str | None, master: bytes | None = None) -> None:
        super().__init__(master, f"{KEY_ENV} is not set (PostgreSQL has no key file)")
        self._conninfo = conninfo
        self._schema = schema
        self._conn_lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._run(TABLE.format(blob="BYTEA"))

    @classmethod
    def from_env(cls, env: Mapping[str, str], master: bytes | None) -> PostgresContentKeys:
        """Beside the events of an eventsourcing PostgreSQL env (POSTGRES_* settings)."""
        conninfo = make_conninfo(
            dbname=env.get("POSTGRES_DBNAME"), host=env.get("POSTGRES_HOST"),
            port=env.get("POSTGRES_PORT"), user=env.get("POSTGRES_USER"),
            password=env.get("POSTGRES_PASSWORD") or None,
            connect_timeout=env.get("POSTGRES_CONNECT_TIMEOUT") or None)
        return cls(conninfo, env.get("POSTGRES_SCHEMA"), master)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            conninfo = self._conninfo if not self._schema else make_conninfo(
                self._conninfo, options=f"-c search_path={self._schema}")
            self._conn = psycopg.connect(conninfo, autocommit=True)
        return self._conn

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every statement here may run twice (reads, insert-if-absent, marks): one that met a
        connection the server had ended (a restart since the last one) runs again on a new
        connection instead of failing the delivery it serves."""
        with self._conn_lock:
            for again in (True, False):
                try:
                    cur = self._connect().execute(sql.replace("?", "%s"), params)
                    return cur.fetchall() if cur.description else []
                except psycopg.Error as exc:
                    broken = self._conn is not None and self._conn.broken
                    if self._conn is not None:
                        self._conn.close()
                    if not (again and broken):
                        raise StoreError(f"content keys: {exc}") from exc
            raise AssertionError("unreachable")

    def _insert(self, tenant: str, user: str, wrapped: bytes) -> None:
        self._run("INSERT INTO content_keys VALUES (?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING",
                  (tenant, user, wrapped))

    def _tombstone(self, tenant: str, user: str, at: str) -> bool:
        with self._conn_lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    rows = conn.execute("DELETE FROM content_keys WHERE tenant = %s AND "
                                        "user_id = %s AND wrapped IS NOT NULL RETURNING 1",
                                        (tenant, user)).fetchall()
                    conn.execute("INSERT INTO content_keys VALUES (%s, %s, NULL, %s, NULL) "
                                 "ON CONFLICT DO NOTHING", (tenant, user, at))
            except psycopg.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                raise StoreError(f"cannot destroy the content key of {tenant}/{user}: {exc}"
                                 ) from exc
        return bool(rows)

    def _destroyed_fingerprint(self) -> object:
        # the number and a sum of 64-bit hashes: any change of the set changes it (but for a
        # hash collision), a shard move that deletes as many tombstones as were added included
        return tuple(self._run(
            "SELECT count(*), coalesce(sum(hashtextextended(tenant || chr(31) || user_id, 0)), 0)"
            " FROM content_keys WHERE destroyed_at IS NOT NULL")[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
