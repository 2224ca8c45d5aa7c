"""The work-queue port on the embedded SQLite webhook inbox (no NATS).

Deliveries are the `pending` rows of `webhook_inbox` (adapters/deliveries/inbox_sqlite.py, same
file). Next to it: `webhook_attempts(delivery_id, attempts, due, last_error)` — a fetch takes a
lease (the attempt is counted and the row is not due again for `lease` seconds, so two processes
never work on one delivery at once; a crashed worker's lease runs out and the delivery comes
again); `retry` sets `due` to the backoff; `ack` marks the inbox row processed. Dead letters are
rows of `webhook_dead_letters` (payload kept for replay; id = the row id). sqlite3 errors become
`DeliveryStoreError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from adapters.deliveries.inbox_sqlite import SCHEMA as INBOX_SCHEMA
from adapters.deliveries.inbox_sqlite import connect
from adapters.deliveries.work_queue import DeadLetter, Delivery
from adapters.errors import DeliveryStoreError

T = TypeVar("T")

# the inbox table is the receiver's (adapters/deliveries/inbox_sqlite.py); these are the workers'
# own
SCHEMA = INBOX_SCHEMA + """;
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT PRIMARY KEY,
    attempts    INTEGER NOT NULL,
    due         REAL NOT NULL,
    last_error  TEXT
);
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    provider    TEXT NOT NULL,
    payload     BLOB NOT NULL,
    tenant      TEXT,
    mailbox     TEXT,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    at          TEXT NOT NULL
)
"""


class SqliteWork:
    def __init__(self, path: str, *, lease: float = 300.0, busy_timeout: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.lease, self.clock = path, lease, clock
        self._conn = connect(path, busy_timeout, SCHEMA)

    def _tx(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise DeliveryStoreError(f"webhook inbox {self.path}: {exc}") from exc

    def _take(self, limit: int) -> list[Delivery]:
        now = self.clock()

        def take(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                "SELECT i.delivery_id, i.provider, i.payload, COALESCE(a.attempts, 0) "
                "FROM webhook_inbox i LEFT JOIN webhook_attempts a USING (delivery_id) "
                "WHERE i.status = 'pending' AND (a.due IS NULL OR a.due <= ?) "
                "ORDER BY i.received_at, i.rowid LIMIT ?", (now, limit)).fetchall()
            out = []
            for delivery_id, provider, payload, attempts in rows:
                conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempts, due) VALUES (?, ?, ?) "
                    "ON CONFLICT (delivery_id) DO UPDATE SET attempts = excluded.attempts, "
                    "due = excluded.due", (delivery_id, attempts + 1, now + self.lease))
                out.append(Delivery(provider, delivery_id, bytes(payload), attempts + 1,
                                    delivery_id))
            return out

        return self._tx(take)

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            found = self._take(limit)
            if found or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def ack(self, delivery: Delivery) -> None:
        done = datetime.now(UTC).isoformat()

        def ack(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_inbox SET status = 'processed', processed_at = ? "
                         "WHERE delivery_id = ?", (done, delivery.delivery_id))
            conn.execute("DELETE FROM webhook_attempts WHERE delivery_id = ?",
                         (delivery.delivery_id,))

        self._tx(ack)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        self._tx(lambda conn: conn.execute(
            "UPDATE webhook_attempts SET due = ? WHERE delivery_id = ?",
            (self.clock() + delay, delivery.delivery_id)))

    async def put_dead_letter(self, delivery: Delivery, *, tenant: str | None,
                              mailbox: str | None, error: str) -> str:
        at = datetime.now(UTC).isoformat()

        def put(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT OR IGNORE INTO webhook_dead_letters (delivery_id, provider, payload, "
                "tenant, mailbox, attempts, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.delivery_id, delivery.provider, delivery.payload, tenant, mailbox,
                 delivery.attempts, error, at))
            row = conn.execute("SELECT id FROM webhook_dead_letters WHERE delivery_id = ?",
                               (delivery.delivery_id,)).fetchone()
            return str(row[0])

        return self._tx(put)

    async def dead_letters(self) -> list[DeadLetter]:
        def select(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, provider, delivery_id, tenant, mailbox, attempts, error, at "
                "FROM webhook_dead_letters ORDER BY id").fetchall()
            return [DeadLetter(str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7])
                    for r in rows]

        return self._tx(select)

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        def replay(conn: sqlite3.Connection) -> DeadLetter:
            row = conn.execute(
                "SELECT id, provider, delivery_id, tenant, mailbox, attempts, error, at, payload "
                "FROM webhook_dead_letters WHERE id = ?",
                (int(dead_letter_id) if dead_letter_id.isdigit() else -1,)).fetchone()
            if row is None:
                raise KeyError(dead_letter_id)
            conn.execute(
                "INSERT INTO webhook_inbox (delivery_id, provider, payload, received_at, status) "
                "VALUES (?, ?, ?, ?, 'pending') ON CONFLICT (delivery_id) DO UPDATE SET "
                "status = 'pending', processed_at = NULL",
                (row[2], row[1], row[8], datetime.now(UTC).isoformat()))
            conn.execute("DELETE FROM webhook_attempts WHERE delivery_id = ?", (row[2],))
            conn.execute("DELETE FROM webhook_dead_letters WHERE id = ?", (row[0],))
            return DeadLetter(str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6],
                              row[7])

        return self._tx(replay)

    async def close(self) -> None:
        self._conn.close()
