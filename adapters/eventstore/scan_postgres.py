"""The PostgreSQL side of adapters.eventstore.scan: the server scans a tenant's stream and sends
only the events a `Prefilter` does not rule out, or reads one thread's events and the
tenant-wide ones by index (`select_by_index`, with the indexes `create_scan_indexes` makes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from eventsourcing.persistence import Recorder, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresDatastore
from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from adapters.eventstore.scan import Prefilter, Selection
from domain import events as ev

# The `thread` field of a stored MessageSynced / EmailSent, as its JSON-escaped bytes: those
# after the first `"thread":"` up to the next quote. Only bytes, never text or jsonb: a stored
# event may hold `\u0000` (an erased subject), which PostgreSQL's JSON types refuse, and an index
# expression that fails would fail the write. The first `"thread":"` is the event's own field:
# inside a JSON string a quote is escaped, and no field before `thread` is an object.
THREAD_OF = "crmsync_event_thread"
_THREAD_OF_BODY = (
    "SELECT CASE WHEN q > 0 THEN substring(rest for q - 1) END FROM (SELECT rest, "
    "position('\"'::bytea in rest) AS q FROM (SELECT substring(state from p + 10) AS rest "
    "FROM (SELECT position('\"thread\":\"'::bytea in state) AS p) AS a WHERE p > 0) AS b) "
    "AS c")
_WRITERS: tuple[type[ev.DomainEvent], ...] = (ev.MessageSynced, ev.EmailSent)


def _writers_predicate() -> Composed:
    return SQL("topic IN ({})").format(SQL(", ").join(Literal(get_topic(k)) for k in _WRITERS))


def create_scan_indexes(datastore: PostgresDatastore, table: str) -> None:
    """The indexes `select_by_index` reads, if missing: (stream, topic, version) for the
    tenant-wide events, and (stream, thread, version) over the thread writers. On a store
    that already holds events, the first start builds them (a one-off full read)."""
    schema = Identifier(datastore.schema)
    statements = [
        SQL("CREATE OR REPLACE FUNCTION {schema}.{fn}(state bytea) RETURNS bytea LANGUAGE sql "
            "IMMUTABLE PARALLEL SAFE AS {body}").format(schema=schema, fn=Identifier(THREAD_OF),
                                                       body=Literal(_THREAD_OF_BODY)),
        SQL("CREATE INDEX IF NOT EXISTS {name} ON {schema}.{table} (originator_id, topic, "
            "originator_version)").format(name=Identifier(f"{table}_topic_idx"), schema=schema,
                                          table=Identifier(table)),
        SQL("CREATE INDEX IF NOT EXISTS {name} ON {schema}.{table} (originator_id, "
            "{schema}.{fn}(state), originator_version) WHERE {writers}").format(
            name=Identifier(f"{table}_thread_idx"), schema=schema, table=Identifier(table),
            fn=Identifier(THREAD_OF), writers=_writers_predicate()),
    ]
    with datastore.transaction(commit=True) as curs:
        # processes starting together: one makes the indexes, the others wait and see them
        curs.execute("SELECT pg_advisory_xact_lock(hashtext('crmsync_scan_indexes'))")
        curs.execute(SQL("SELECT to_regclass(%s) AS found"),
                     [f"{datastore.schema}.{table}_thread_idx"])
        found = curs.fetchone()
        if found is not None and found["found"] is not None:
            return  # every start of every CLI process passes here: no DDL, no table lock
        for statement in statements:
            curs.execute(statement)
        # a new index rewrites the table's row count in the catalogue; without column
        # statistics (autovacuum off) the planner then took the stream for ~2k rows and
        # sorted the whole stream for every page of `select_prefiltered` (4 s -> 87 s)
        curs.execute(SQL("ANALYZE {schema}.{table}").format(schema=schema,
                                                            table=Identifier(table)))


def thread_key(thread: str) -> bytes:
    """The indexed form of a thread id: its JSON-escaped bytes (no quotes)."""
    return orjson.dumps(thread)[1:-1]


def indexable(thread: str) -> bool:
    """False for an id whose JSON form holds an escape: `crmsync_event_thread` would cut it at
    an escaped quote, so such a thread is read by scan."""
    return b"\\" not in thread_key(thread)


def select_by_index(recorder: Recorder, stream: Any, selection: Selection, page: int
                    ) -> Iterator[tuple[int, str, bytes]]:
    """(version, topic, state) of the stream's events `selection` names, in order, streamed a
    page at a time."""
    assert isinstance(recorder, PostgresAggregateRecorder)
    assert selection.by_thread <= set(_WRITERS), "only the writers' thread is indexed"
    schema = Identifier(recorder.datastore.schema)
    statement = SQL(
        "SELECT originator_version, topic, state FROM {schema}.{table} WHERE originator_id = %s "
        "AND (topic = ANY(%s) OR (topic = ANY(%s) AND position(%s::bytea in state) > 0) "
        "OR ({writers} AND topic = ANY(%s) AND {schema}.{fn}(state) = %s::bytea)) "
        "ORDER BY originator_version"
    ).format(schema=schema, table=Identifier(recorder.events_table_name),
             writers=_writers_predicate(), fn=Identifier(THREAD_OF))
    params = [stream, sorted(get_topic(k) for k in selection.whole),
              sorted(get_topic(k) for k in selection.by_mailbox), selection.needle,
              sorted(get_topic(k) for k in selection.by_thread), thread_key(selection.thread)]
    with recorder.datastore.get_connection() as conn, conn.transaction(force_rollback=True):
        # the whole result is wanted: plan for it, not for its first rows (a cursor's default)
        conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        # the ORDER BY sorts the rows with their bytes (51k, 19 MB on the 1M history): in memory
        conn.execute("SET LOCAL work_mem = '64MB'")
        conn.execute("SET LOCAL jit = off")  # compiling took 40 ms of a 250 ms read
        # tuples: a dict per row cost a third of the read (51k rows of the 1M history)
        with conn.cursor(name="crmsync_selected", row_factory=tuple_row) as curs:
            curs.itersize = page
            curs.execute(statement, params)
            for version, topic, state in curs:
                yield version, topic, bytes(state)


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
