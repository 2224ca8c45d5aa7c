"""The outbox worker's position (adapters.tracking.outbox) in the SQLite file of `--db`; its
one-worker lock is an flock beside that file."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from adapters.errors import StoreError
from adapters.tracking.outbox import NAME, TABLE


class SqliteOutboxTracking:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute(TABLE)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the outbox position in {path}: {exc}") from None

    def position(self) -> int:
        try:
            row = self.conn.execute("SELECT position FROM outbox_tracking WHERE name=?",
                                    (NAME,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox position: {exc}") from None
        return int(row[0]) if row else 0

    def save(self, position: int) -> None:
        try:
            self.conn.execute("INSERT INTO outbox_tracking VALUES (?, ?) ON CONFLICT(name) DO "
                              "UPDATE SET position=excluded.position", (NAME, position))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save the outbox position: {exc}") from None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with open(f"{self.path}.outbox.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        self.conn.close()
