"""Sync throughput end to end: webhook HTTP -> JetStream -> 2 sync worker processes -> events in
PostgreSQL -> projections, beside the raw eventsourcing PostgreSQL insert rate at the same batch
size, measured in the same run.

    python -m benchmarks.sync_throughput --postgres URL --nats nats://127.0.0.1:4222 \
        [--messages 100000] [--mailboxes 8] [--tenants 4] [--batch 500] [--workers 2] \
        [--round 1000] [--rate PUSHES_PER_S]

Without --rate the pushes are sent as fast as the receiver answers (throughput: the backlog is
the whole run); with --rate they are paced (open loop), each raising the next mailbox's head by
--round messages, so the per-delivery latency is the engine's at that load, not a backlog's.
Every delivery is timed from the receiver's 202 until its mail is durable in the log and until
it is visible in the views (`benchmarks.delivery_latency`).

The provider is synthetic and in-process in each worker (no HTTP to a provider): a mailbox's
messages 0..head-1 exist, `head` is a row per mailbox in `bench_heads` that this driver raises
before each push. So the figure is the engine's (webhooks, queue, locks, decide, append,
projection), not a provider's. Fresh schemas and streams are made and dropped.

The workers count the SQL statements they send (`benchmarks.sql_count`, a dump on SIGUSR1): the
run prints them per delivery, over the pushes only, by their first words.

The cursors only say when to stop waiting. What counts is what was stored: the MessageSynced
events in the log, the `message` view's rows and each mailbox's sync status (synced, rejected).
Any shortfall, any rejected command, is printed loudly and the run exits 1 (a run that lost
messages has no throughput to report).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from adapters.eventstore.mailbox_locks_postgres import PostgresLocks
from adapters.eventstore.store import EventStore, stream_id
from adapters.providers.sources import Changes, PushChannel, ResyncPage
from benchmarks import sql_count
from benchmarks.delivery_latency import DeliveryClock, summary
from domain import events as ev
from domain.state import Mailbox
from runners.bootstrap.config import open_engine
from runners.bootstrap.config_postgres import postgres_env
from runners.services.engine import Engine

T0 = datetime.now(UTC) - timedelta(days=1)


def message(address: str, i: int) -> ev.MailMessage:
    local = address.split("@", 1)[0]
    return ev.MailMessage.model_validate({
        "id": f"{local}-{i}", "message_id": f"<{local}.{i}@bench.test>",
        "thread_id": f"t{i // 4}", "from": f"client{i % 50}@ext.test", "to": [address],
        "subject": f"Re: order {i // 4}", "body": "Hello, here is the update. " * 8,
        "sent_at": (T0 + timedelta(seconds=i)).isoformat(), "labels": ["INBOX"]})


class BenchSource:
    push: PushChannel | None = None

    def __init__(self, url: str, page: int) -> None:
        self.url, self.page = url, page
        self.conn = psycopg.connect(url, autocommit=True)

    def changes(self, address: str, cursor: str) -> Changes:
        row = self.conn.execute("SELECT head FROM bench_heads WHERE address = %s",
                                (address,)).fetchone()
        head = int(row[0]) if row else 0
        start = int(cursor)
        end = min(head, start + self.page)
        return Changes(messages=[message(address, i) for i in range(start, end)],
                       deleted_ids=[], new_cursor=str(end), more=end < head)

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        yield ResyncPage([], cursor="0")

    def close(self) -> None:
        pass


class BenchSources:
    def __init__(self, url: str, page: int) -> None:
        self.source = BenchSource(url, page)

    def open(self, tenant: str, mailbox: Mailbox) -> BenchSource:
        return self.source


def worker_main(url: str, batch: int) -> None:
    from runners.bootstrap.logs import configure_logging
    from runners.bootstrap.settings import load_settings
    from runners.entrypoints.sync_loop import LoopOptions, run_process
    from runners.entrypoints.sync_runner import open_work
    from runners.services.sync_worker import SyncWorker

    configure_logging("WARNING", json=True)
    if os.environ.get("BENCH_SQL_DIR"):  # counted from the start: the driver takes differences
        sql_count.install()
        path = os.path.join(os.environ["BENCH_SQL_DIR"], f"{os.getpid()}.json")

        def dump(signum: int, frame: object) -> None:
            sql_count.dump(path + ".tmp")
            os.replace(path + ".tmp", path)

        signal.signal(signal.SIGUSR1, dump)
    engine = open_engine("unused.db", url)
    engine.follow = False
    worker = SyncWorker(engine, BenchSources(url, batch), PostgresLocks(url), batch_size=batch)
    # as `crmsync run sync` composes it: partitioned by tenant unless CRMSYNC_NATS_PARTITIONS=0
    queue, affinity = open_work("unused.db", url, load_settings(), worker)
    run_process(worker, queue, LoopOptions(poll=0.2, imap_interval=1e9), affinity)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(name: str) -> dict[int, float]:
    """CPU time of each process whose command name is `name` (postgres backends, nats), by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() != name:
                        continue
            except OSError:
                continue
            found[int(entry)] = cpu_seconds(int(entry))
    return found


def cpu_snapshot(procs: list[subprocess.Popen[bytes]]) -> list[float | dict[int, float]]:
    return [*(cpu_seconds(p.pid) for p in procs), cpu_of("postgres"), cpu_of("nats-server"),
            time.process_time()]


def cpu_since(before: list[float | dict[int, float]],
              after: list[float | dict[int, float]]) -> list[float]:
    """CPU seconds of each entry between two snapshots. Postgres and nats are summed per pid
    over the processes alive at the end (one started since counts from 0): a backend that ended
    in between takes its CPU with it, and a plain sum over all processes went negative."""
    used = []
    for b, a in zip(before, after, strict=True):
        if isinstance(a, dict):
            was = b if isinstance(b, dict) else {}
            used.append(sum(cpu - was.get(pid, 0.0) for pid, cpu in a.items()))
        else:
            assert not isinstance(b, dict)
            used.append(a - b)
    return used


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_schema(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def raw_insert_rate(base: str, total: int, batch: int) -> float:
    """eventsourcing's PostgreSQL event store (our mapper + its recorder, as the workers append):
    the same MessageSynced events, built beforehand, `batch` per transaction."""
    schema = f"bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        env = postgres_env(with_schema(base, schema))
        store = EventStore(env)
        stream = stream_id("raw")
        events = [ev.MessageSynced(tenant="raw", actor="system:sync", occurred_at=T0,
                                   correlation_id="c", mailbox="m", thread=f"m:t{i // 4}",
                                   message=message("raw@bench.test", i))
                  for i in range(total)]
        started = time.perf_counter()
        for start in range(0, total, batch):
            # the library's insert of plain JSON (no sealing, no chain): the raw rate
            store.app.recorder.insert_events([
                StoredEvent(stream, start + k + 1, get_topic(type(e)),
                            orjson.dumps(e.model_dump(by_alias=True)))
                for k, e in enumerate(events[start:start + batch])])
        elapsed = time.perf_counter() - started
        store.close()
        return total / elapsed
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def stored_counts(reader: psycopg.Connection[Any], engine: Engine,
                  boxes: list[tuple[str, str, str]]) -> dict[str, int]:
    """What the run stored, counted in the log and in the views (not cursors)."""
    def one(query: str, *params: object) -> int:
        row = reader.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    status = [doc for tenant in sorted({t for t, _, _ in boxes})
              for rows in engine.committed_views().scan("sync_status", tenant).values()
              for doc in rows.values()]
    return {
        "MessageSynced events": one("SELECT count(*) FROM crmsync_events WHERE topic LIKE %s",
                                    "%MessageSynced"),
        "CommandRejected events": one("SELECT count(*) FROM crmsync_events WHERE topic LIKE %s",
                                      "%CommandRejected"),
        "message view rows": one("SELECT count(*) FROM view_message"),
        "sync status synced": sum(int(d["synced"]) for d in status),
        "sync status rejected": sum(int(d["rejected"]) for d in status),
    }


def shortfalls(counts: dict[str, int], total: int) -> list[str]:
    """Every count that is not what `total` synced messages must give."""
    want = {"MessageSynced events": total, "CommandRejected events": 0,
            "message view rows": total, "sync status synced": total, "sync status rejected": 0}
    return [f"{name}: {counts[name]}, expected {expected}" for name, expected in want.items()
            if counts[name] != expected]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", default=os.environ.get("CRMSYNC_POSTGRES_URL"))
    p.add_argument("--nats", default=os.environ.get("CRMSYNC_NATS_URL",
                                                    "nats://127.0.0.1:4222"))
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--mailboxes", type=int, default=8)
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--round", type=int, default=1000, help="messages per mailbox per push")
    p.add_argument("--workers", type=int, default=2, help="sync worker processes")
    p.add_argument("--rate", type=float, help="pushes per second, paced (default: unpaced)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args.postgres, args.batch)
        return
    if not args.postgres or args.messages > 1_000_000:
        sys.exit("--postgres is required; at most 1,000,000 messages")
    # mail content is sealed (L2) and PostgreSQL mode refuses it without a master key: a
    # throwaway one for this run's schema, inherited by the processes it starts
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", base64.b64encode(os.urandom(32)).decode())
    schema = f"bench_sync_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = with_schema(args.postgres, schema)
    suffix = uuid.uuid4().hex[:8]
    env = {**os.environ, "CRMSYNC_NATS_URL": args.nats, "CRMSYNC_NATS_STREAM": f"B{suffix}",
           "CRMSYNC_NATS_SUBJECT_PREFIX": f"b{suffix}.hooks", "CRMSYNC_NATS_DURABLE": "bench",
           "CRMSYNC_LOG_LEVEL": "WARNING", "PYTHONPATH": os.getcwd(),
           "CRMSYNC_GMAIL_PUSH_AUTH": "off",  # its Gmail pushes are unsigned
           "BENCH_SQL_DIR": tempfile.mkdtemp(prefix="bench-sql-")}
    procs = CHILDREN
    lost: list[str] = []
    engine = open_engine("unused.db", url)
    engine.follow = False
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_heads (address text PRIMARY KEY, head bigint)")
        boxes = []
        for t in range(args.tenants):
            tenant = f"t{t}"
            lines = [{"cmd": "AddUser", "user": "u", "email": f"u@{tenant}.test",
                      "role": "member"}]
            for m in range(t, args.mailboxes, args.tenants):
                address = f"box{m}@{tenant}.test"
                boxes.append((tenant, f"mbx{m}", address))
                lines.append({"cmd": "ConnectMailbox", "mailbox": f"mbx{m}", "user": "u",
                              "provider": "gmail", "address": address})
            report = engine.apply_lines([json.dumps({"tenant": tenant, **x}) for x in lines])
            assert not report.rejected, report.rejected
        with psycopg.connect(url, autocommit=True) as conn:
            for _, _, address in boxes:
                conn.execute("INSERT INTO bench_heads VALUES (%s, 0)", (address,))
        port = free_port()
        cmd = [sys.executable, "-m", "runners.entrypoints.cli"]
        procs.append(subprocess.Popen([*cmd, "run", "webhooks", "--port", str(port)], env=env))
        for _ in range(args.workers):
            profile = (["-m", "cProfile", "-o", f"{os.environ['BENCH_PROFILE_DIR']}/worker-"
                        f"{len(procs)}.prof"] if os.environ.get("BENCH_PROFILE_DIR") else [])
            procs.append(subprocess.Popen([sys.executable, *profile, "-m",
                                           "benchmarks.sync_throughput",
                                           "--worker", "--postgres", url, "--batch",
                                           str(args.batch)], env=env))
        procs.append(subprocess.Popen([*cmd, "--postgres", url, "run", "projections",
                                       "--poll", "0.2"], env=env,
                                      stderr=subprocess.DEVNULL))

        seen = {"position": 0}
        latest: dict[str, str] = {}
        reader = psycopg.connect(url, autocommit=True)

        def cursors() -> list[str | None]:
            """The stored cursors, read from the cursor events only (folding every event here
            would take the CPU the workers need)."""
            rows = reader.execute(
                "SELECT notification_id, state FROM crmsync_events WHERE notification_id > %s "
                "AND topic LIKE %s ORDER BY notification_id",
                (seen["position"], "%MailboxCursorAdvanced")).fetchall()
            for position, state in rows:
                data = orjson.loads(state)
                latest[data["mailbox"]] = data["cursor"]
                seen["position"] = position
            return [latest.get(m) for _, m, _ in boxes]

        wait(lambda: all(c == "0" for c in cursors()), 900)
        wait(lambda: _up(port), 60)
        per_box = args.messages // len(boxes)
        pushes = 0
        clock = DeliveryClock(url, {address: m for _, m, address in boxes})
        workers = procs[1:1 + args.workers]
        sql_before = worker_statements(workers, env["BENCH_SQL_DIR"])
        cpu_before = cpu_snapshot(procs)
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn, httpx.Client() as http:
            head = 0
            while head < per_box:
                head = min(per_box, head + args.round)
                for _, _, address in boxes:
                    if args.rate:  # open loop: the push's slot, whatever the answers so far
                        time.sleep(max(0.0, started + pushes / args.rate - time.perf_counter()))
                    conn.execute("UPDATE bench_heads SET head = %s WHERE address = %s",
                                 (head, address))
                    pushes += 1
                    data = json.dumps({"emailAddress": address, "historyId": head}).encode()
                    answer = http.post(f"http://127.0.0.1:{port}/webhooks/gmail", json={
                        "message": {"data": base64.b64encode(data).decode(),
                                    "messageId": f"{pushes}"},
                        "subscription": "projects/p/subscriptions/bench"})
                    assert answer.status_code == 202
                    clock.accepted(address, head)
        posted = time.perf_counter() - started
        wait(lambda: all(c == str(per_box) for c in cursors()), 3600, 0.2)
        durable = time.perf_counter() - started
        cpu_used = cpu_since(cpu_before, cpu_snapshot(procs))
        sql_used = worker_statements(workers, env["BENCH_SQL_DIR"])
        sql_used.subtract(sql_before)
        log_head = engine.head()
        wait(lambda: min(engine.positions().values()) >= log_head, 3600, 0.5)
        projected = time.perf_counter() - started
        wait(lambda: clock.outstanding() == 0, 60)
        latencies = clock.stop()
        total = per_box * len(boxes)
        counts = stored_counts(reader, engine, boxes)
        lost = shortfalls(counts, total)
        reader.close()
        raw = raw_insert_rate(args.postgres, total, args.batch)
        print(f"messages: {total} in {len(boxes)} mailboxes of {args.tenants} tenants, "
              f"{pushes} webhook pushes of up to {min(args.round, per_box)} messages "
              f"(posted in {posted:.1f} s: "
              f"{pushes / posted:.0f}/s{', paced at ' + str(args.rate) if args.rate else ''}), "
              f"batch {args.batch}, {args.workers} sync workers")
        print(f"webhook -> events durable:  {total / durable:8.0f} msg/s ({durable:.1f} s)")
        print(f"webhook -> projected:       {total / projected:8.0f} msg/s ({projected:.1f} s)")
        print(f"raw eventsourcing insert:   {raw:8.0f} events/s (batch {args.batch})")
        print(f"durable / raw:              {total / durable / raw:8.0%}")
        print(f"per delivery, 202 -> durable in the log: {summary(latencies.durable)}")
        print(f"per delivery, 202 -> visible in views:   {summary(latencies.visible)} "
              f"(polled every {clock.every * 1000:.0f} ms)")
        names = ["webhooks", *(f"worker {i + 1}" for i in range(args.workers)), "projections",
                 "postgres (every backend of the server)", "nats", "driver"]
        print(f"CPU seconds until durable ({durable:.1f} s wall x {os.cpu_count()} CPUs): "
              + ", ".join(f"{n} {c:.1f}" for n, c in zip(names, cpu_used, strict=True)))
        print("stored: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
        print_statements(sql_used, pushes)
        if lost:
            print(f"SHORTFALL: {total} messages pushed, not all stored as synced messages; the "
                  "figures above do not count:\n  " + "\n  ".join(lost), file=sys.stderr)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        engine.close()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        _drop_streams(args.nats, f"B{suffix}")
        shutil.rmtree(env["BENCH_SQL_DIR"], ignore_errors=True)
    if lost:
        sys.exit(1)


def worker_statements(workers: list[subprocess.Popen[bytes]], directory: str
                      ) -> Counter[str]:
    """The SQL statements the workers sent so far, by their first words (each worker writes
    its counts on SIGUSR1: benchmarks.sql_count)."""
    paths = [Path(directory) / f"{w.pid}.json" for w in workers]
    for worker, path in zip(workers, paths, strict=True):
        path.unlink(missing_ok=True)
        worker.send_signal(signal.SIGUSR1)
    wait(lambda: all(p.exists() for p in paths), 30)
    return sql_count.statements(paths)


def print_statements(used: Counter[str], deliveries: int) -> None:
    """Statements per delivery, the engine's apart from the synthetic provider's own read."""
    provider = sum(n for label, n in used.items() if "bench_heads" in label)
    engine = sum(n for label, n in used.items() if "bench_heads" not in label)
    print(f"SQL statements of the workers: {engine / deliveries:.1f} per delivery ({engine} for "
          f"{deliveries} deliveries; the synthetic provider's head reads apart: {provider})")
    for label, n in used.most_common(14):
        if n and "bench_heads" not in label:
            print(f"  {n / deliveries:6.2f}  {label}")


# the receiver, workers and runner of the run: a wait fails at once when one of them died (a
# worker that cannot start would otherwise leave the driver waiting for cursors until timeout)
CHILDREN: list[subprocess.Popen[bytes]] = []


def wait(condition: object, timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        dead = [(p.args, p.returncode) for p in CHILDREN if p.poll() is not None]
        if dead:
            raise SystemExit(f"a process of the run exited: {dead}")
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(every)


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _drop_streams(url: str, stream: str) -> None:
    import asyncio

    import nats

    async def drop() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for name in (stream, f"{stream}_DEAD", f"{stream}_PART"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()

    asyncio.run(drop())


if __name__ == "__main__":
    main()
