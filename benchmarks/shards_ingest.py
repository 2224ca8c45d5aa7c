"""Ingest with one shard and with two (issue #15, past one machine), beside the raw insert rate.

    python -m benchmarks.shards_ingest --postgres postgresql://postgres@127.0.0.1/test \
        [--tenants 4] [--messages 5000] [--writers 2] [--batch 500]

Each layout gets fresh PostgreSQL DATABASES on the server of `--postgres` (dropped afterwards):
`1 shard` puts every tenant in one database, `2 shards` splits the tenants over two. The same
`--writers` processes append the same events in both layouts (`benchmarks.generate`'s history
per tenant, MessageSynced mostly, sealed and chained as the engine appends them, `--batch` per
transaction); each writer owns whole tenants, and with two shards half the writers write each
shard. Events are built before the clock starts; the figure is events stored / wall time from the
first writer's start to the last one's end, counted again from the databases afterwards.

What it shows: eventsourcing's recorder locks its events table for every insert, so writers of
one database queue on that lock; two databases are two locks. What it does not show on one
2-core machine: more capacity — both databases share the cores, disk and WAL writer of one
server, so the second shard can only take what the first left idle. The gain of shards on
separate machines is the lock *and* the hardware; here only the lock.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import uuid
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SETTLE = 0.5  # seconds between the writers' ready and their common start


def _db_url(base: str, dbname: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(base).items() if k != "options"}
    params["dbname"] = dbname
    return make_conninfo("", **params)


def _admin(base: str, statement: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(statement)


def writer(url: str, tenants: list[str], messages: int, batch: int, start_at: Any,
           out: Any) -> None:
    from adapters.eventstore.store import EventStore
    from benchmarks.generate import append_all, history
    from runners.bootstrap.config_postgres import postgres_env

    store = EventStore(postgres_env(url))
    prepared = {t: list(history(t, 20, 100, messages, 0, seed=hash(t) & 0xFFFF))
                for t in tenants}
    out.put(("ready", 0, 0.0, 0.0))
    while time.time() < start_at.value:
        time.sleep(0.001)
    started = time.time()
    stored = sum(append_all(store, t, iter(events), batch) for t, events in prepared.items())
    out.put(("done", stored, started, time.time()))
    store.close()


def run_layout(base: str, shards: int, tenants: int, messages: int, writers: int,
               batch: int) -> tuple[int, float, int]:
    """(events appended, wall seconds, events counted in the databases)."""
    names = [f"bench_shard_{uuid.uuid4().hex[:8]}" for _ in range(shards)]
    for name in names:
        _admin(base, f"CREATE DATABASE {name}")
    try:
        urls = [_db_url(base, n) for n in names]
        for url in urls:  # tables made once, before the writers race to make them
            from adapters.eventstore.store import EventStore
            from runners.bootstrap.config_postgres import postgres_env

            EventStore(postgres_env(url)).close()
        ctx = mp.get_context("spawn")
        start_at, out = ctx.Value("d", 1e18), ctx.Queue()
        procs = []
        for w in range(writers):
            shard = w * shards // writers
            mine = [f"t{t}" for t in range(tenants) if t % writers == w]
            procs.append(ctx.Process(target=writer, args=(urls[shard], mine, messages, batch,
                                                          start_at, out)))
        for proc in procs:
            proc.start()
        for _ in procs:
            assert out.get(timeout=600)[0] == "ready"
        start_at.value = time.time() + SETTLE
        done = [out.get(timeout=3600) for _ in procs]
        for proc in procs:
            proc.join()
        stored = sum(d[1] for d in done)
        wall = max(d[3] for d in done) - min(d[2] for d in done)
        counted = 0
        for url in urls:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM crmsync_events").fetchone()
                counted += int(row[0]) if row else 0
        return stored, wall, counted
    finally:
        for name in names:
            _admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", required=True, help="a database URL on the server")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--messages", type=int, default=5000, help="messages per tenant")
    parser.add_argument("--writers", type=int, default=2, help="writer processes per layout")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if args.tenants < args.writers or args.writers < 2:
        raise SystemExit("need --writers >= 2 and at least one tenant per writer")
    if not os.environ.get("CRMSYNC_CONTENT_KEY"):  # sealing needs a master key; a throwaway one
        os.environ["CRMSYNC_CONTENT_KEY"] = "YmVuY2gtY29udGVudC1rZXktMzItYnl0ZXMtbG9uZyE="
    from benchmarks.sync_throughput import raw_insert_rate

    print(f"{args.tenants} tenants x {args.messages} messages, {args.writers} writer processes,"
          f" batch {args.batch}, cpus {os.cpu_count()}")
    figures = {}
    for shards in (1, 2):
        stored, wall, counted = run_layout(args.postgres, shards, args.tenants, args.messages,
                                           args.writers, args.batch)
        if counted != stored:
            raise SystemExit(f"{shards} shard(s): appended {stored}, counted {counted}")
        figures[shards] = stored / wall
        print(f"{shards} shard(s):  {stored} events in {wall:6.2f} s = {stored / wall:8.0f} "
              "events/s (sealed, chained)")
    raw = raw_insert_rate(args.postgres, min(50_000, args.tenants * args.messages), args.batch)
    print(f"raw eventsourcing insert (1 writer, plain JSON): {raw:8.0f} events/s")
    print(f"2 shards / 1 shard: {figures[2] / figures[1]:5.2f}x")


if __name__ == "__main__":
    main()
