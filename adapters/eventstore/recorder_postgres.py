"""eventsourcing's PostgreSQL application recorder with bounded waits (issue #10 point 10).

The library retries every recorder call 10 times on OperationalError/InterfaceError, and a pool
that cannot connect makes each try wait the whole pool timeout: while PostgreSQL was down a call
took 14 s or more before failing, and the API held every request behind it. Here:

- a call is tried at most `ATTEMPTS` times, and not again when the pool itself timed out (it
  has been trying to connect for the whole pool timeout already); for `FAIL_FAST` seconds after
  a pool timeout every call fails at once;
- the pool's connections carry a connect timeout, TCP keepalives (a silent peer is noticed in
  about 25 s) and a statement timeout, so a stuck connection fails instead of hanging forever;
- the pool gives up a reconnection after `RECONNECT_TIMEOUT` (the next call starts afresh);
- `create_table` also makes the indexes the auditor queries read (scan_postgres);
- `EventStore` sets the pool's pre-ping (a stale connection after a restart is replaced before
  use, not failed on) and a short pool timeout, unless the environment says otherwise. The ping
  is a round trip, so it is made only for a connection that sat idle `IDLE_PING` seconds or
  whose socket has something to read (`SuspectCheck`); a call that still meets a broken
  connection has the pool check its idle ones before it is tried again.

Selected by `APPLICATION_RECORDER_TOPIC`, see `adapters.eventstore.store.postgres_defaults`.
"""

from __future__ import annotations

import functools
import select
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, Recorder
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Connection
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool, PoolTimeout

ATTEMPTS = 2
RETRY_WAIT = 0.2
CONNECT_TIMEOUT = 3  # seconds (libpq)
STATEMENT_TIMEOUT_MS = 60_000
# The pool's reconnection attempts back off exponentially without a cap until they give up
# (psycopg_pool's reconnect_timeout, 5 minutes): after a minute's outage the next attempt could
# be a minute away. Giving up after a few seconds lets the next caller start a fresh attempt.
RECONNECT_TIMEOUT = 3.0
# After a pool timeout, calls fail at once for this long instead of each waiting the pool
# timeout again: an API serialises its store calls, so N waiting callers took N pool timeouts.
FAIL_FAST = 1.0
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}

# A pooled connection is pinged at checkout only after it sat idle this long (seconds). At every
# checkout the ping was 5 of the ~22 statements of a sync delivery (issue #15).
IDLE_PING = 5.0

F = TypeVar("F", bound=Callable[..., Any])
_checked_at: weakref.WeakKeyDictionary[Connection[Any], float] = weakref.WeakKeyDictionary()


class SuspectCheck:
    """The pool's check at checkout: psycopg_pool's ping, but only when the connection sat idle
    `IDLE_PING` seconds or more, or has input waiting. An idle session is sent nothing unless
    the server ends it (shutdown, restart, pg_terminate_backend: an error message, then EOF),
    so a restart is noticed here without a round trip; a peer that vanished silently is caught
    by the ping after `IDLE_PING`, or by the retry of the call (`bounded`).

    A connection that fails its ping has the pool check all its idle ones at once: a restart
    ends them all, and psycopg_pool, finding them broken one checkout at a time, backs off
    1 s, then 2 s, and gave up (pool timeout) before it reached a working one."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = weakref.ref(pool)  # the pool holds this check: no reference cycle

    def __call__(self, conn: Connection[Any]) -> None:
        now = time.monotonic()
        last = _checked_at.get(conn)
        _checked_at[conn] = now
        if last is not None and now - last < IDLE_PING and not _has_input(conn):
            return
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            pool = self._pool()
            if pool is not None:
                pool.check()  # the others: pinged, the broken ones replaced
            raise


def _has_input(conn: Connection[Any]) -> bool:
    if conn.closed or conn.broken:
        return True  # the ping raises: the pool discards it
    poller = select.poll()  # not select(): no limit on the descriptor's number
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def bounded(method: F) -> F:
    """The library method without its own retry decorator, retried `ATTEMPTS` times."""
    inner: Callable[..., Any] = getattr(method, "__wrapped__", method)

    @functools.wraps(inner)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < getattr(self, "unavailable_until", 0.0):
            raise OperationalError("PostgreSQL unavailable: no connection could be had just now")
        for tries in range(1, ATTEMPTS + 1):
            try:
                return inner(self, *args, **kwargs)
            except (InterfaceError, OperationalError) as exc:
                if isinstance(exc.__cause__, PoolTimeout):
                    self.unavailable_until = time.monotonic() + FAIL_FAST
                    raise
                if tries == ATTEMPTS:
                    raise
                time.sleep(RETRY_WAIT)
        raise AssertionError("unreachable")

    return cast(F, call)


class BoundedPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, **options: Any) -> None:
        # Before the first connection: the factory calls create_table (which opens the pool)
        # after constructing the recorder.
        datastore.pool.reconnect_timeout = RECONNECT_TIMEOUT
        if datastore.pre_ping:  # the library's check pings at every checkout
            datastore.pool._check = SuspectCheck(datastore.pool)
        kwargs = datastore.pool.kwargs
        if isinstance(kwargs, dict):
            kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
            for key, value in KEEPALIVES.items():
                kwargs.setdefault(key, value)
            kwargs.setdefault("options", f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        super().__init__(datastore, **options)
        self.unavailable_until = 0.0

    def create_table(self) -> None:
        super().create_table()
        # imported here: scan_postgres imports the store, which names this module
        from adapters.eventstore.scan_postgres import create_scan_indexes

        create_scan_indexes(self.datastore, self.events_table_name)

    @bounded
    def select_stream(self, stream: UUID, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(version, topic, stored bytes) of the stream's events after `after`, at most
        `limit`: `select_events` without what a fold does not read (issue #15). Binary, so
        PostgreSQL sends the bytes as they are (as text, hex: twice the bytes, encoded and
        decoded), as tuples (the library makes a dict, a UUID and a frozen dataclass a row)."""
        query = SQL("SELECT originator_version, topic, state FROM {}.{} WHERE originator_id = %s "
                    "AND originator_version > %s ORDER BY originator_version LIMIT %s").format(
            Identifier(self.datastore.schema), Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, \
                conn.cursor(row_factory=tuple_row, binary=True) as cur:
            cur.execute(query, (stream, after, limit), prepare=True)
            return cur.fetchall()

    insert_events = bounded(PostgresApplicationRecorder.insert_events)
    select_events = bounded(PostgresApplicationRecorder.select_events)
    select_notifications = bounded(PostgresApplicationRecorder.select_notifications)
    max_notification_id = bounded(PostgresApplicationRecorder.max_notification_id)


def log_position(recorder: Recorder, stream: UUID, seq: int) -> int | None:
    """The log position (notification id) of event `seq` of `stream`; None without one."""
    assert isinstance(recorder, PostgresApplicationRecorder)
    query = SQL("SELECT notification_id FROM {}.{} WHERE originator_id = %s AND "
                "originator_version = %s").format(
        Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
    with recorder.datastore.transaction(commit=False) as cur:
        cur.execute(query, (stream, seq))
        found = cur.fetchone()
        return int(found["notification_id"]) if found else None
