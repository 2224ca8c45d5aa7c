"""Partition leases (`adapters.deliveries.partitions.PartitionLeases`) as PostgreSQL session
advisory locks, like the mailbox locks: they live as long as the worker's session, so a worker
that dies (SIGKILL included) or loses its connection releases them at once, with no timeout to
wait out.

A worker joins by locking the first free member slot of its group (0..63); `members` reads the
held slots from `pg_locks` (one query; a rank is the slot's place among them), so every worker
derives the same ranks without talking to the others. A partition is one more lock, taken with
`pg_try_advisory_lock`: two workers never hold the same partition, whatever they believe the
membership is. Keys are hashed with the group (the consumer's name: one per shard's NATS names)
and the session's `search_path`, as the mailbox locks are. psycopg errors become `StoreError`,
and a broken session forgets its leases (the server released them).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from adapters.errors import StoreError

MAX_MEMBERS = 64
_KEY = "hashtextextended(%s || current_setting('search_path'), 0)"
_LIVE = f"""
WITH k AS (SELECT s, hashtextextended(%s || s::text || current_setting('search_path'), 0) AS key
           FROM generate_series(0, {MAX_MEMBERS - 1}) s)
SELECT k.s FROM k JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
 AND l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid
ORDER BY k.s"""


class PostgresLeases:
    def __init__(self, url: str, group: str) -> None:
        self.url, self.group = url, group
        self.slot: int | None = None
        self.held: set[int] = set()
        self._conn: psycopg.Connection[TupleRow] | None = None

    def _session(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.slot, self.held = None, set()  # a new session holds nothing
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    def _try(self, conn: psycopg.Connection[TupleRow], key: str) -> bool:
        row = conn.execute(f"SELECT pg_try_advisory_lock({_KEY})", (key,)).fetchone()
        return bool(row and row[0])

    def members(self) -> tuple[int, int]:
        try:
            conn = self._session()
            if self.slot is None:
                self.slot = next((s for s in range(MAX_MEMBERS)
                                  if self._try(conn, f"crmsync.member:{self.group}:{s}")), None)
                if self.slot is None:
                    raise StoreError(f"more than {MAX_MEMBERS} sync workers in {self.group}")
            live = [int(r[0]) for r in conn.execute(
                _LIVE, (f"crmsync.member:{self.group}:",)).fetchall()]
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"partition leases: {exc}") from exc
        if self.slot not in live:  # cannot be while the session lives; be safe
            live = sorted({*live, self.slot})
        return live.index(self.slot), len(live)

    def take(self, partition: int) -> bool:
        if partition in self.held:
            return True  # advisory locks stack: never take one twice
        try:
            got = self._try(self._session(), f"crmsync.part:{self.group}:{partition}")
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"partition lease {partition}: {exc}") from exc
        if got:
            self.held.add(partition)
        return got

    def release(self, partition: int) -> None:
        if partition not in self.held:
            return
        self.held.discard(partition)
        try:
            assert self._conn is not None
            self._conn.execute(f"SELECT pg_advisory_unlock({_KEY})",
                               (f"crmsync.part:{self.group}:{partition}",))
        except psycopg.Error as exc:
            self._drop()  # closing the session releases the lock
            raise StoreError(f"partition lease {partition}: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.slot, self.held = None, set()
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._drop()
