"""Where the outbox worker keeps its position in the event log, and its one-worker lock.

The position is a low watermark: every outbound request recorded at or before it has been
acknowledged. A restarted worker reads the log after it (and the streams of the tenants it
finds there), so restart cost follows the unacknowledged tail, not the whole history.

Table `outbox_tracking(name PRIMARY KEY, position)` in the engine's own store: the SQLite file of
`--db` or the PostgreSQL URL's schema. `exclusive()` makes a second worker wait (a hot standby):
a PostgreSQL session advisory lock (released when the process dies) or an flock beside the
SQLite file. Library errors are `StoreError`. The backends are modules of their own, each
importing only its driver: `outbox_sqlite`, `outbox_postgres`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

TABLE = ("CREATE TABLE IF NOT EXISTS outbox_tracking (name TEXT PRIMARY KEY, "
         "position BIGINT NOT NULL)")
NAME = "outbox"


class OutboxTracking(Protocol):
    def position(self) -> int: ...

    def save(self, position: int) -> None: ...

    def exclusive(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class MemoryOutboxTracking:
    def __init__(self) -> None:
        self.saved = 0

    def position(self) -> int:
        return self.saved

    def save(self, position: int) -> None:
        self.saved = position

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass
