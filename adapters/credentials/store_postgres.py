"""Mailbox credentials (adapters.credentials.store) in the PostgreSQL schema of the URL; stores
credentials only with a configured key (no key file beside a server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from adapters.credentials.store import KEY_ENV, TABLES, SqlCredentialStore
from adapters.errors import CredentialStoreError


class PostgresCredentialStore(SqlCredentialStore):
    """In the URL's schema; stores credentials only with $CRMSYNC_CREDENTIALS_KEY set."""

    backend = "PostgreSQL"

    def __init__(self, url: str, key: str | None = None) -> None:
        super().__init__(key)
        self.url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        for statement in TABLES:
            self._run("create the credential tables", statement.format(blob="bytea"))

    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    def _run(self, doing: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                with self._cursor() as cur:
                    cur.execute(sql.replace("?", "%s"), tuple(params))
                    return list(cur.fetchall()) if cur.description is not None else []
            except psycopg.Error as exc:
                raise CredentialStoreError(f"cannot {doing} (PostgreSQL): {exc}") from None

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[TupleRow]]:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _load_key(self, create: bool) -> bytes | None:
        if create:
            raise CredentialStoreError(f"cannot store mailbox credentials: {KEY_ENV} is not set "
                                       "(32 random bytes, base64; e.g. `openssl rand -base64 "
                                       "32`); with PostgreSQL no key is generated")
        return None
