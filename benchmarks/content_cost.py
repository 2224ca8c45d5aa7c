"""What sealing content (SPEC L2) costs: sync throughput and rebuild rate with content sealing
off and on, the same workload in the same run (each mode on a fresh store, alternating).

    python -m benchmarks.content_cost [--messages 50000] [--mailboxes 20] [--batch 500]
        [--rounds 3] [--queries 200] [--what all|views] [--postgres URL]

Sync: SyncMessage commands decided and appended in batches as the sync workers do
(`Engine.execute_batch`), then the projections brought up to date (`catch_up`): messages/s.
Rebuild: `Engine.rebuild()` of every projection over the same log: events/s, the median of
`--rounds`. The two stores are open side by side and every batch and rebuild alternates
between them. "off" stores the
content in plaintext (the baseline, chain still on); "on" seals it with the owner's key.
`--what all`: off = plaintext log and views, on = both sealed; `--what views`: the log is sealed
in both, only the view rows differ (the cost of sealing the views alone).
Both also per CPU second of this process (both threads; PostgreSQL's server not included), which
the load of other processes on a shared machine does not skew. The rebuild's cost is also the
median of each round's own cost (its off and on rebuilds ran back to back), which a load that
changes between rounds skews less than the ratio of the two medians.
Queries: `--queries` timelines (admin, a contact with ~1/50 of the threads) and thread answers
(its owner, a random thread) per mode, alternating, in process (the CLI's path): p50 and p95 in ms.
SQLite in a temporary directory, or fresh PostgreSQL schemas (dropped afterwards).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from adapters.views.seal import ViewSealer
from domain.commands import parse_command
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=400)
TENANT = "bench"


def setup(users: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"cmd": "AddUser", "user": "admin", "email": "admin@b.test",
                                  "role": "admin"}]
    for u in range(users):
        out += [{"cmd": "AddUser", "user": f"u{u}", "email": f"u{u}@b.test", "role": "member"},
                {"cmd": "ConnectMailbox", "mailbox": f"mb{u}", "user": f"u{u}",
                 "provider": "gmail", "address": f"u{u}@b.test"},
                # shared (V3), so the admin's timelines list the threads
                {"cmd": "SetGlobalVisibility", "user": f"u{u}", "record_type": "contact",
                 "level": "visible"}]
    out += [{"cmd": "CreateContact", "record": f"c{i}", "owner": "admin", "name": f"C {i}",
             "kind": "person", "emails": [f"client{i}@ext.test"]} for i in range(50)]
    return out


def sync_command(i: int, users: int) -> dict[str, Any]:
    u = i % users
    sent = (T0 + timedelta(seconds=i)).isoformat()
    return {"cmd": "SyncMessage", "tenant": TENANT, "mailbox": f"mb{u}", "message": {
        "id": f"m{i}", "message_id": f"<m{i}@b.test>", "thread_id": f"t{i // (4 * users)}",
        "from": f"client{i % 50}@ext.test", "to": [f"u{u}@b.test"],
        "subject": f"Re: order {i // 4}", "body": "Hello, here is the update. " * 8,
        "sent_at": sent, "labels": ["INBOX"],
        "attachments": [{"name": f"invoice-{i}.pdf", "size": 1000,
                         "content_type": "application/pdf"}] if i % 5 == 0 else []}}


def use(engine: Engine, seal: bool, args: argparse.Namespace) -> Engine:
    """The engine of a mode, with view sealing set for it (a process-wide switch)."""
    ViewSealer.enabled = seal
    engine.stores().events.mapper.seal = seal or args.what == "views"
    return engine


def prepare(engine: Engine, seal: bool, args: argparse.Namespace) -> None:
    use(engine, seal, args)
    engine.execute_batch([parse_command({"tenant": TENANT, **c})
                          for c in setup(args.mailboxes)], now=NOW, correlation_id="setup")
    engine.catch_up()


def sync_batch(engine: Engine, start: int, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds taken and this process's CPU seconds (both threads) for one batch."""
    began, cpu = time.perf_counter(), time.process_time()
    batch = [parse_command(sync_command(i, args.mailboxes))
             for i in range(start, min(start + args.batch, args.messages))]
    engine.execute_batch(batch, now=NOW, correlation_id=f"b{start}")
    engine.catch_up()
    return time.perf_counter() - began, time.process_time() - cpu


def query_ms(engine: Engine, n: int, args: argparse.Namespace) -> tuple[float, float]:
    """One timeline and one thread answer (ms each)."""
    rng = random.Random(n)
    began = time.perf_counter()
    timeline = engine.query_timeline(TENANT, "admin", f"c{rng.randrange(50)}")
    middle = time.perf_counter()
    threads = args.messages // (4 * args.mailboxes)
    u = rng.randrange(args.mailboxes)  # the owner sees the whole thread (V9)
    engine.query_thread(TENANT, f"u{u}", f"mb{u}:t{rng.randrange(threads)}")
    assert timeline
    return 1000 * (middle - began), 1000 * (time.perf_counter() - middle)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rebuild(engine: Engine) -> tuple[float, float]:
    """Events per second, and per CPU second of this process (the writer thread included)."""
    began, cpu = time.perf_counter(), time.process_time()
    engine.rebuild()
    events = engine.head()
    return events / (time.perf_counter() - began), events / (time.process_time() - cpu)


def fresh(args: argparse.Namespace, tmp: str, name: str) -> tuple[Engine, str | None]:
    if not args.postgres:
        return open_engine(os.path.join(tmp, f"{name}.db")), None
    schema = f"bench_cost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return open_engine("unused", f"{args.postgres}?options=-csearch_path%3D{schema}"), schema


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--mailboxes", type=int, default=20)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3, help="rebuilds per mode")
    p.add_argument("--queries", type=int, default=200, help="timeline+thread answers per mode")
    p.add_argument("--what", choices=("all", "views"), default="all",
                   help="all: log and views sealed or not; views: only the views differ")
    p.add_argument("--postgres", help="a PostgreSQL URL without options (fresh schemas)")
    args = p.parse_args()
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", base64.b64encode(os.urandom(32)).decode())
    # Both stores side by side, every batch and rebuild alternating between them (order
    # swapped each time), so the load of a shared machine falls on both alike.
    with tempfile.TemporaryDirectory() as tmp:
        opened = {seal: fresh(args, tmp, f"seal-{seal}") for seal in (False, True)}
        try:
            for seal, (engine, _) in opened.items():
                prepare(engine, seal, args)
            spent = {False: 0.0, True: 0.0}
            cpu = {False: 0.0, True: 0.0}
            for n, start in enumerate(range(0, args.messages, args.batch)):
                for seal in ((False, True) if n % 2 == 0 else (True, False)):
                    took, used = sync_batch(use(opened[seal][0], seal, args), start, args)
                    spent[seal] += took
                    cpu[seal] += used
            latency: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for n in range(args.queries):
                for seal in ((False, True) if n % 2 == 0 else (True, False)):
                    latency[seal].append(query_ms(use(opened[seal][0], seal, args), n, args))
            rates: dict[bool, list[float]] = {False: [], True: []}
            cpu_rates: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for seal in ((False, True) if r % 2 == 0 else (True, False)):
                    rate, cpu_rate = rebuild(use(opened[seal][0], seal, args))
                    rates[seal].append(rate)
                    cpu_rates[seal].append(cpu_rate)
            events = opened[True][0].head()
        finally:
            for engine, schema in opened.values():
                engine.close()
                if schema is not None:
                    with psycopg.connect(args.postgres, autocommit=True) as conn:
                        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    print(f"{args.messages} messages in {args.mailboxes} mailboxes, {events} events, "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}, sealed: {args.what}")
    # per CPU second too: on a shared machine the load of others slows both modes' wall clock
    # alike only on average, while this process's CPU time is its own
    sync = {seal: args.messages / spent[seal] for seal in spent}
    sync_cpu = {seal: args.messages / cpu[seal] for seal in cpu}
    print(f"sync msg/s    off {sync[False]:8.0f}  on {sync[True]:8.0f}  "
          f"cost {100 * (1 - sync[True] / sync[False]):5.1f} %   per CPU s: off "
          f"{sync_cpu[False]:.0f} on {sync_cpu[True]:.0f} "
          f"cost {100 * (1 - sync_cpu[True] / sync_cpu[False]):.1f} %")
    for seal in (False, True):
        print(f"rebuild ev/s {'on ' if seal else 'off'} runs: "
              + ", ".join(f"{x:.0f}" for x in rates[seal]) + "   per CPU s: "
              + ", ".join(f"{x:.0f}" for x in cpu_rates[seal]))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    coff, con = statistics.median(cpu_rates[False]), statistics.median(cpu_rates[True])
    print(f"rebuild ev/s  off {off:8.0f}  on {on:8.0f}  cost {100 * (1 - on / off):5.1f} %   "
          f"per CPU s: off {coff:.0f} on {con:.0f} cost {100 * (1 - con / coff):.1f} %")
    # each round's two rebuilds ran back to back, so they saw about the same load: the median
    # of the rounds' own costs is steadier on a shared machine than the ratio of the medians,
    # whose off and on medians may come from rounds under different loads
    paired = [100 * (1 - a / b) for a, b in zip(rates[True], rates[False], strict=True)]
    cpu_paired = [100 * (1 - a / b) for a, b in zip(cpu_rates[True], cpu_rates[False],
                                                     strict=True)]
    print("rebuild cost per round: " + ", ".join(f"{x:.1f}" for x in paired)
          + "   per CPU s: " + ", ".join(f"{x:.1f}" for x in cpu_paired))
    print(f"rebuild cost, median of the rounds: {statistics.median(paired):5.1f} %   "
          f"per CPU s: {statistics.median(cpu_paired):.1f} %")
    for i, name in enumerate(("timeline", "thread")):
        cells = {seal: [x[i] for x in latency[seal]] for seal in latency}
        print(f"{name:8} ms   off p50 {pct(cells[False], 50):6.2f} p95 {pct(cells[False], 95):6.2f}"
              f"  on p50 {pct(cells[True], 50):6.2f} p95 {pct(cells[True], 95):6.2f}")


if __name__ == "__main__":
    main()
