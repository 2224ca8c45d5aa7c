"""Per-mailbox locks for the sync workers: one worker syncs a mailbox at a time.

`PostgresLocks` (in mailbox_locks_postgres: the embedded path never loads psycopg): a session
advisory lock per (schema, tenant, mailbox) on a connection of its own — released when the
process dies, so a SIGKILLed worker never blocks a mailbox. Waiting is bounded by `lock_timeout`
(the delivery is then retried). `FileLocks`: embedded mode, an `flock` on one file beside the
database (all mailboxes; several embedded worker processes take turns). psycopg and OS errors
become `StoreError`.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from adapters.errors import StoreError


class FileLocks:
    def __init__(self, path: str) -> None:
        self.path = path
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, tenant: str, mailbox: str) -> Iterator[None]:
        with self._guard:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(f"sync lock {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def close(self) -> None:
        pass
