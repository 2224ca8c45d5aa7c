"""The reads of a command-side state whose mailboxes are folded when first touched (issue #15;
`domain.lazy_mailboxes`), on PostgreSQL: the stream without its synced mail, and one mailbox's
synced mail by the index the auditors' thread reads already use (`crmsync_event_thread`: every
thread id begins with `{mailbox}:`). No table or index of its own: appends cost what they did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError, Recorder
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from adapters.errors import StoreError
from adapters.eventstore.scan_postgres import THREAD_OF, indexable, thread_key
from domain import events as ev

Row = tuple[int, str, bytes]
WRITERS = sorted(get_topic(k) for k in (ev.MessageSynced, ev.EmailSent))
# as the thread index's own predicate (literals: a parameter would not prove it)
_WRITERS_IN = SQL("topic IN ({})").format(SQL(", ").join(Literal(t) for t in WRITERS))
# a synced message's own command id, if it has one (E5): `"command_id":"` can only be a key
# (a quote inside a JSON string is escaped), and the message object holds no such key
KEYED = b'"command_id":"'


def _rows(recorder: Recorder, statement: Composed, params: list[Any]) -> Iterator[Row]:
    assert isinstance(recorder, PostgresAggregateRecorder)
    try:
        with recorder.datastore.get_connection() as conn, \
                conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL jit = off")
            with conn.cursor(name="crmsync_lazy", row_factory=tuple_row, binary=True) as curs:
                curs.itersize = 5000
                curs.execute(statement, params)
                for version, topic, state in curs:
                    yield version, topic, bytes(state)
    except (psycopg.Error, PersistenceError) as exc:  # (the datastore translates some first)
        raise StoreError(f"cannot read the event store: {exc}") from exc


def _table(recorder: Recorder) -> tuple[Identifier, Identifier]:
    assert isinstance(recorder, PostgresAggregateRecorder)
    return Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)


def head(recorder: Recorder, stream: UUID) -> Row | None:
    """The stream's last event."""
    schema, table = _table(recorder)
    statement = SQL("SELECT originator_version, topic, state FROM {}.{} WHERE originator_id = "
                    "%s ORDER BY originator_version DESC LIMIT 1").format(schema, table)
    found = list(_rows(recorder, statement, [stream]))
    return found[0] if found else None


def without_mail(recorder: Recorder, stream: UUID, upto: int) -> Iterator[Row]:
    """The stream's events up to `upto`, in order, but its synced mail (except the mail that
    carries a command id: E5 must know it)."""
    schema, table = _table(recorder)
    statement = SQL(
        "SELECT originator_version, topic, state FROM {}.{} WHERE originator_id = %s AND "
        "originator_version <= %s AND (topic <> ALL(%s) OR position(%s::bytea in state) > 0) "
        "ORDER BY originator_version").format(schema, table)
    return _rows(recorder, statement, [stream, upto, WRITERS, KEYED])


def mailbox_mail(recorder: Recorder, stream: UUID, mailbox: str, upto: int) -> list[Row] | None:
    """The synced mail of the threads whose ids begin with `{mailbox}:`, up to `upto`, in
    order (another mailbox whose id begins with `{mailbox}:` comes too: the fold skips it).
    None when the mailbox's id is not indexable (`scan_postgres.indexable`)."""
    if not indexable(mailbox + ":"):
        return None
    low = thread_key(mailbox + ":")
    high = low[:-1] + bytes([low[-1] + 1])
    schema, table = _table(recorder)
    statement = SQL(
        "SELECT originator_version, topic, state FROM {s}.{t} WHERE originator_id = %s AND "
        "{writers} AND {s}.{fn}(state) >= %s AND {s}.{fn}(state) < %s AND "
        "originator_version <= %s ORDER BY originator_version").format(
        s=schema, t=table, fn=Identifier(THREAD_OF), writers=_WRITERS_IN)
    return list(_rows(recorder, statement, [stream, low, high, upto]))
