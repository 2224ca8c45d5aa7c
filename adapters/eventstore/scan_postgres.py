"""The PostgreSQL side of adapters.eventstore.scan: the server scans a tenant's stream and sends
only the events a `Prefilter` does not rule out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Recorder, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

from adapters.eventstore.scan import Prefilter


def select_prefiltered(recorder: Recorder, stream: Any, after: int, page: int,
                       pre: Prefilter) -> Sequence[StoredEvent]:
    assert isinstance(recorder, PostgresAggregateRecorder)
    # the server scans the stream once and sends only what may matter (a thread's fold on the
    # 1M-event benchmark history: 76k of 1,051k events)
    statement = SQL(
        "SELECT originator_version, topic, state FROM {schema}.{table} WHERE originator_id = %s "
        "AND originator_version > %s AND topic <> ALL(%s) AND (topic <> ALL(%s) OR "
        "position(%s::bytea in state) > 0) ORDER BY originator_version LIMIT %s"
    ).format(schema=Identifier(recorder.datastore.schema),
             table=Identifier(recorder.events_table_name))
    params = [stream, after, sorted(get_topic(k) for k in pre.drop),
              sorted(get_topic(k) for k in pre.unless), pre.needle, page]
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, params)
        return [StoredEvent(originator_id=stream, originator_version=row["originator_version"],
                            topic=row["topic"], state=bytes(row["state"]))
                for row in curs.fetchall()]
