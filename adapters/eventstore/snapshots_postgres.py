"""Snapshot rows (adapters.eventstore.snapshots) in the PostgreSQL URL's schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from adapters.errors import StoreError
from adapters.eventstore.snapshots import DELETE, PROJECTOR, SELECT, TABLE, UPSERT


class PostgresSnapshotRows:
    def __init__(self, url: str) -> None:
        self.url = url
        with self._conn("create the table of") as conn:
            conn.execute(TABLE.format(blob="BYTEA"))

    @contextmanager
    def _conn(self, doing: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"cannot {doing} snapshots (PostgreSQL): {exc}") from exc

    def read(self, tenant: str) -> tuple[str, int, bytes, bytes] | None:
        with self._conn("read") as conn:
            # binary: the state's bytes as they are (as text they came hex-encoded, twice the
            # bytes to send and to decode)
            row = conn.execute(SELECT.format(p="%s"), (tenant,), binary=True).fetchone()
        if row is None:
            return None
        return str(row[0]), int(str(row[1])), bytes(row[2]), bytes(row[3])  # type: ignore[call-overload]

    def write(self, tenant: str, version: str, seq: int, mac: bytes, blob: bytes | bytearray
              ) -> None:
        with self._conn("write") as conn:
            conn.execute(UPSERT.format(p="%s"), (tenant, version, seq, mac, blob))

    def delete(self, tenant: str) -> None:
        with self._conn("delete") as conn:
            conn.execute(DELETE.format(p="%s"), (tenant, PROJECTOR))

    def close(self) -> None:
        pass
