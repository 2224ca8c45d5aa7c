"""Fewer round trips per delivery (issue #15) keep a PostgreSQL restart harmless: pooled connections
are no longer pinged at every checkout, only after sitting idle or when the server sent them
something (an ended session's error and EOF), and the key store's and the mailbox locks'
connections reconnect once when the server ended them. So the first delivery after a restart
neither fails nor loses a message."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from private_servers import PrivatePostgres
from psycopg_pool import ConnectionPool
from sync_fakes import FakeSources, message

from adapters.deliveries.work_queue import Delivery
from adapters.eventstore.mailbox_locks_postgres import PostgresLocks
from adapters.eventstore.recorder_postgres import SuspectCheck
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration
ADDRESS = "mia@acme.test"


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def push(n: int) -> Delivery:
    return Delivery("gmail", f"gmail:{n}", orjson.dumps(
        {"delivery_id": f"gmail:{n}", "subscription": "s", "email_address": ADDRESS,
         "history_id": n}), 1)


def test_a_postgres_restart_between_two_deliveries_fails_none_and_loses_nothing(
        private_pg: PrivatePostgres) -> None:
    engine = open_engine("unused.db", private_pg.url)
    engine.follow = False
    locks = PostgresLocks(private_pg.url)
    try:
        report = engine.apply_lines([json.dumps({"tenant": "acme", **x}) for x in [
            {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "mbx", "user": "mia", "provider": "gmail",
             "address": ADDRESS}]])
        assert not report.rejected
        sources = FakeSources()
        box = sources.box(ADDRESS)
        box.add(*(message(i) for i in range(3)))
        worker = SyncWorker(engine, sources, locks)
        worker.catch_up()  # the first sync
        box.add(message(3, days_ago=0.5))
        assert worker.handle(push(1)).synced == 1
        private_pg.stop("fast")  # every session ended, as a restart or failover does
        private_pg.start()
        box.add(message(4, days_ago=0.4), message(5, days_ago=0.3))
        assert worker.handle(push(2)).synced == 2  # no StoreError: nothing given back
        ids = [e.message.id for _, e in engine.events("acme") if isinstance(e, ev.MessageSynced)]
        assert sorted(ids) == [f"m{i}" for i in range(6)]
    finally:
        locks.close()
        engine.close()


def test_a_pooled_connection_is_pinged_when_the_server_ended_it_even_if_just_used(
        postgres_url: str) -> None:
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(postgres_url, open=False)
    check_if_suspect = SuspectCheck(pool)
    with psycopg.connect(postgres_url, autocommit=True) as conn, \
            psycopg.connect(postgres_url, autocommit=True) as admin:
        check_if_suspect(conn)  # first checkout: pinged
        check_if_suspect(conn)  # just used, nothing to read: no round trip, no error
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                            (conn.info.backend_pid,)).fetchone() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(psycopg.OperationalError):  # the pool discards it, takes another
            check_if_suspect(conn)
