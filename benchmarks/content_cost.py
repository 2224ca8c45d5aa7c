"""What sealing content (SPEC L2) costs: sync throughput and rebuild rate with content sealing
off and on, the same workload in the same run (each mode on a fresh store, alternating).

    python -m benchmarks.content_cost [--messages 50000] [--mailboxes 20] [--batch 500]
        [--rounds 2] [--postgres URL]

Sync: SyncMessage commands decided and appended in batches as the sync workers do
(`Engine.execute_batch`), then the projections brought up to date (`catch_up`): messages/s.
Rebuild: `Engine.rebuild()` of every projection over the same log: events/s. "off" stores the
content in plaintext (the baseline, chain still on); "on" seals it with the owner's key.
SQLite in a temporary directory, or fresh PostgreSQL schemas (dropped afterwards).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from domain.commands import parse_command
from runners.config import open_engine
from runners.engine import Engine

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TENANT = "bench"


def setup(users: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"cmd": "AddUser", "user": "admin", "email": "admin@b.test",
                                  "role": "admin"}]
    for u in range(users):
        out += [{"cmd": "AddUser", "user": f"u{u}", "email": f"u{u}@b.test", "role": "member"},
                {"cmd": "ConnectMailbox", "mailbox": f"mb{u}", "user": f"u{u}",
                 "provider": "gmail", "address": f"u{u}@b.test"}]
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


def one_run(engine: Engine, seal: bool, args: argparse.Namespace) -> tuple[float, float]:
    engine.store.mapper.seal = seal
    now = T0 + timedelta(days=400)
    engine.execute_batch([parse_command({"tenant": TENANT, **c})
                          for c in setup(args.mailboxes)], now=now, correlation_id="setup")
    engine.catch_up()
    started = time.perf_counter()
    for start in range(0, args.messages, args.batch):
        batch = [parse_command(sync_command(i, args.mailboxes))
                 for i in range(start, min(start + args.batch, args.messages))]
        engine.execute_batch(batch, now=now, correlation_id=f"b{start}")
        engine.catch_up()
    sync = args.messages / (time.perf_counter() - started)
    events = engine.store.max_position()
    started = time.perf_counter()
    engine.rebuild()
    rebuild = events / (time.perf_counter() - started)
    return sync, rebuild


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
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--postgres", help="a PostgreSQL URL without options (fresh schemas)")
    args = p.parse_args()
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", base64.b64encode(os.urandom(32)).decode())
    figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for seal in (False, True):
                engine, schema = fresh(args, tmp, f"r{r}-{seal}")
                try:
                    figures[seal].append(one_run(engine, seal, args))
                finally:
                    engine.close()
                    if schema is not None:
                        with psycopg.connect(args.postgres, autocommit=True) as conn:
                            conn.execute(f"DROP SCHEMA {schema} CASCADE")
                sync, rebuild = figures[seal][-1]
                print(f"round {r + 1} sealing {'on ' if seal else 'off'}: sync {sync:8.0f} "
                      f"msg/s, rebuild {rebuild:8.0f} events/s", flush=True)
    for i, name in ((0, "sync msg/s"), (1, "rebuild ev/s")):
        off = statistics.median(f[i] for f in figures[False])
        on = statistics.median(f[i] for f in figures[True])
        print(f"{name:13} off {off:8.0f}  on {on:8.0f}  cost {100 * (1 - on / off):5.1f} %")


if __name__ == "__main__":
    main()
