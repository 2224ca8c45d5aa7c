"""What the event store asks of eventsourcing's SQLite recorder beyond the library's API."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import Recorder
from eventsourcing.sqlite import SQLiteApplicationRecorder


def log_position(recorder: Recorder, stream: UUID, seq: int) -> int | None:
    """The log position (rowid) of event `seq` of `stream`; None without one."""
    assert isinstance(recorder, SQLiteApplicationRecorder)
    with recorder.datastore.transaction(commit=False) as c:
        c.execute(f"SELECT rowid FROM {recorder.events_table_name} "
                  "WHERE originator_id = ? AND originator_version = ?", (stream.hex, seq))
        row = c.fetchone()
        return int(row[0]) if row else None
