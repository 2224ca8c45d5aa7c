"""Webhook deliveries made durable in a SQLite inbox table (the embedded default, no NATS).

`webhook_inbox(delivery_id PRIMARY KEY, provider, payload, received_at, status, processed_at)`
in a file of its own (so a long view rebuild in the engine's file never delays an
acknowledgement to a provider). `deliver` commits before it returns (WAL, synchronous=FULL);
`INSERT OR IGNORE` on the dedup id reports a duplicate as False. The in-process sync workers read
`pending()` and call `mark_processed()`. sqlite3 errors become `DeliveryStoreError`.

Processed rows are kept for the dedup window (`dedup_window`, default 7 days: Pub/Sub keeps an
unacknowledged message at most 7 days, Graph retries for 4 hours), so a redelivery within it is
still a duplicate, then deleted: `prune()` deletes them in batches of `prune_batch` rows (one
short transaction each), and `deliver` prunes one batch itself at most every `prune_every`
seconds. Pending rows are never pruned.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from adapters.deliveries.delivery_ids import check_delivery_id, check_provider
from adapters.deliveries.model import WebhookDelivery, encode
from adapters.errors import DeliveryStoreError
from adapters.private_files import private_file

T = TypeVar("T")
PENDING, PROCESSED = "pending", "processed"
DEDUP_WINDOW = timedelta(days=7)

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_inbox (
    delivery_id  TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    payload      BLOB NOT NULL,
    received_at  TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed')),
    processed_at TEXT
);
CREATE INDEX IF NOT EXISTS webhook_inbox_pending ON webhook_inbox (status, received_at);
CREATE INDEX IF NOT EXISTS webhook_inbox_processed ON webhook_inbox (processed_at)
    WHERE status = 'processed'
"""


def connect(path: str, busy_timeout: float, schema: str) -> sqlite3.Connection:
    """The delivery file (owner-only), in WAL mode with full syncs: a 202 means on disk."""
    try:
        conn = sqlite3.connect(private_file(path), timeout=busy_timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise DeliveryStoreError(f"webhook inbox {path}: {exc}") from exc
    return conn


@dataclass(frozen=True)
class StoredDelivery:
    delivery_id: str
    provider: str
    payload: bytes
    received_at: str  # UTC ISO-8601
    status: str


class SqliteInbox:
    """The delivery port on a SQLite file (see the module docstring)."""

    def __init__(self, path: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 busy_timeout: float = 5.0, dedup_window: timedelta = DEDUP_WINDOW,
                 prune_every: timedelta = timedelta(minutes=1), prune_batch: int = 500) -> None:
        self.path, self._clock = path, clock
        self.dedup_window, self.prune_every, self.prune_batch = (dedup_window, prune_every,
                                                                 prune_batch)
        self._pruned_at: datetime | None = None
        self._lock = threading.Lock()
        self._conn = connect(path, busy_timeout, SCHEMA)

    async def deliver(self, delivery: WebhookDelivery) -> bool:
        return await self.store(delivery.provider, delivery.delivery_id, encode(delivery))

    async def store(self, provider: str, delivery_id: str, payload: bytes) -> bool:
        """Store `payload` durably; True when new, False when the id is already in the inbox."""
        check_provider(provider)
        check_delivery_id(delivery_id)
        received = self._clock().astimezone(UTC).isoformat()

        def insert(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO webhook_inbox (delivery_id, provider, payload, "
                "received_at, status) VALUES (?, ?, ?, ?, 'pending')",
                (delivery_id, provider, payload, received))
            return cursor.rowcount == 1

        new = await asyncio.to_thread(self._run, insert)
        now = self._clock()
        if self._pruned_at is None or now - self._pruned_at >= self.prune_every:
            self._pruned_at = now
            await asyncio.to_thread(self._run, self._prune_batch)
        return new

    async def prune(self) -> int:
        """Delete every processed row older than the dedup window, batch by batch; returns
        how many rows went."""
        total = 0
        while True:
            deleted = await asyncio.to_thread(self._run, self._prune_batch)
            total += deleted
            if deleted < self.prune_batch:
                return total

    def _prune_batch(self, conn: sqlite3.Connection) -> int:
        cutoff = (self._clock() - self.dedup_window).astimezone(UTC).isoformat()
        return conn.execute(
            "DELETE FROM webhook_inbox WHERE rowid IN (SELECT rowid FROM webhook_inbox "
            "WHERE status = 'processed' AND processed_at < ? ORDER BY processed_at LIMIT ?)",
            (cutoff, self.prune_batch)).rowcount

    async def pending(self, limit: int = 100, provider: str | None = None) -> list[StoredDelivery]:
        """The oldest deliveries not yet processed, in the order received."""
        def select(conn: sqlite3.Connection) -> list[StoredDelivery]:
            where = "status = 'pending'" + (" AND provider = ?" if provider else "")
            args: tuple[object, ...] = (provider, limit) if provider else (limit,)
            rows = conn.execute(
                "SELECT delivery_id, provider, payload, received_at, status FROM webhook_inbox "
                f"WHERE {where} ORDER BY received_at, rowid LIMIT ?", args).fetchall()
            return [StoredDelivery(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

        return await asyncio.to_thread(self._run, select)

    async def mark_processed(self, delivery_ids: Iterable[str]) -> int:
        """Mark deliveries processed (one transaction); returns how many were pending."""
        ids = list(delivery_ids)
        done = self._clock().astimezone(UTC).isoformat()

        def update(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = sum(conn.execute(
                    "UPDATE webhook_inbox SET status = 'processed', processed_at = ? "
                    "WHERE delivery_id = ? AND status = 'pending'", (done, i)).rowcount
                    for i in ids)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return changed

        return await asyncio.to_thread(self._run, update)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._conn)
            except sqlite3.Error as exc:
                raise DeliveryStoreError(f"webhook inbox {self.path}: {exc}") from exc
