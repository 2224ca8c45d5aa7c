"""Snapshot rows (adapters.eventstore.snapshots) in the SQLite file beside the events."""

from __future__ import annotations

import sqlite3

from adapters.errors import StoreError
from adapters.eventstore.snapshots import DELETE, PROJECTOR, SELECT, TABLE, UPSERT


class SqliteSnapshotRows:
    def __init__(self, path: str) -> None:
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA secure_delete=ON")  # a discarded snapshot's pages
            self.conn.execute(TABLE.format(blob="BLOB"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the snapshot table: {exc}") from exc

    def delete(self, tenant: str) -> None:
        try:
            self.conn.execute(DELETE.format(p="?"), (tenant, PROJECTOR))
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot delete a snapshot: {exc}") from exc

    def read(self, tenant: str) -> tuple[str, int, bytes, bytes] | None:
        try:
            row = self.conn.execute(SELECT.format(p="?"), (tenant,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read a snapshot: {exc}") from exc
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))

    def write(self, tenant: str, version: str, seq: int, mac: bytes, blob: bytes | bytearray
              ) -> None:
        try:
            self.conn.execute(UPSERT.format(p="?"), (tenant, version, seq, mac, blob))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write a snapshot: {exc}") from exc

    def close(self) -> None:
        self.conn.close()
