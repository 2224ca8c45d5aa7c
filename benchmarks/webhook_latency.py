"""Webhook receiver answer time under an open-loop load (issue #4: p99 < 50 ms at 1,000 req/s).

    python -m benchmarks.webhook_latency --rate 1000 --seconds 20 [--nats URL] [--port P] \
        [--embedded] [--graph-share 0.1] [--connections 64] [--warmup 3] [--profile FILE]

Starts `crmsync run webhooks` as its own process (production mode: JetStream at --nats, a stream
and subject prefix of this run only, deleted afterwards; `--embedded`: the SQLite inbox in a
temporary directory), waits until it answers, then sends distinct valid Gmail Pub/Sub pushes
(unique messageIds; `--graph-share` of them Graph change notifications with the right
clientState) at fixed intervals, whatever the answers: OPEN loop. Each request's latency runs
from its SCHEDULED send time to the end of its response, so a stalled server shows as latency,
not as a lower send rate (no coordinated omission). Requests go over `--connections` keep-alive
HTTP/1.1 connections written by hand on asyncio streams (a scheduled request waits in a queue
for a free connection; that wait counts). The first `--warmup` seconds are sent but not counted.

Prints the requested and achieved rates, answers by class, p50/p90/p99/p99.9/max in ms, the CPU
used by the receiver and by this load generator (a generator near 100 % of a core would be the
bottleneck), and how many deliveries the inbox holds afterwards (each 2xx must be durable).
`--profile FILE` runs the receiver under cProfile (written when it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CLIENT_STATE = "bench-client-state-" + uuid.uuid4().hex
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)  # seconds, counted requests only
    ok: int = 0
    other: dict[str, int] = field(default_factory=dict)
    sent_ok_total: int = 0  # 2xx including the warm-up: what the inbox must hold
    last_done: float = 0.0


def gmail_request(port: int, n: int, run: str) -> bytes:
    data = json.dumps({"emailAddress": f"box{n % 50}@bench.test",
                       "historyId": str(1_000_000 + n)}).encode()
    body = json.dumps({
        "message": {"data": base64.urlsafe_b64encode(data).decode(),
                    "messageId": f"{run}-{n}", "publishTime": "2026-11-26T04:00:00.000Z"},
        "subscription": "projects/bench/subscriptions/gmail-push"}).encode()
    return _request(port, "/webhooks/gmail", body)


def graph_request(port: int, n: int, run: str) -> bytes:
    body = json.dumps({"value": [{
        "id": f"{run}-note-{n}", "subscriptionId": "sub-bench",
        "subscriptionExpirationDateTime": "2026-12-19T22:11:09.952Z",
        "clientState": CLIENT_STATE, "changeType": "created",
        "resource": f"users/u-1/messages/{run}-m-{n}",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                         "@odata.id": f"Users/u-1/Messages/{run}-m-{n}",
                         "@odata.etag": f'W/"etag-{n}"', "id": f"{run}-m-{n}"}}]}).encode()
    return _request(port, "/webhooks/graph", body)


def _request(port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def connection(port: int, queue: asyncio.Queue[tuple[float, bytes, bool] | None],
                     results: Results) -> None:
    """One keep-alive connection: takes the next due request, sends it, reads the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            scheduled, request, counted = item
            try:
                writer.write(request)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = -1
                kind = type(exc).__name__
                results.other[kind] = results.other.get(kind, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            done = time.perf_counter()
            results.last_done = done
            if 200 <= status < 300:
                results.sent_ok_total += 1
            if not counted:
                continue
            results.latencies.append(done - scheduled)
            if 200 <= status < 300:
                results.ok += 1
            elif status != -1:
                results.other[str(status)] = results.other.get(str(status), 0) + 1
    finally:
        writer.close()


async def drive(port: int, requests: list[bytes], rate: float, warmup: int,
                connections: int, drain: float) -> tuple[Results, float, float]:
    """Open loop: request i is due at start + i / rate. Returns (results, send window, gen CPU)."""
    results = Results()
    queue: asyncio.Queue[tuple[float, bytes, bool] | None] = asyncio.Queue()
    workers = [asyncio.create_task(connection(port, queue, results))
               for _ in range(connections)]
    await asyncio.sleep(0.2)  # connections open
    cpu0 = time.process_time()
    start = time.perf_counter() + 0.05
    interval = 1.0 / rate
    i = 0
    while i < len(requests):
        now = time.perf_counter()
        due = start + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # every request already due is queued now, stamped with its own scheduled time
        while i < len(requests) and start + i * interval <= now:
            queue.put_nowait((start + i * interval, requests[i], i >= warmup))
            i += 1
    first_counted = start + warmup * interval
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=drain)
    for task in pending:
        task.cancel()
    unanswered = len(requests) - warmup - len(results.latencies)  # still open after the drain
    if unanswered:
        results.other["unanswered"] = unanswered
    cpu = time.process_time() - cpu0
    window = results.last_done - first_counted
    return results, window, cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (the receiver processes of --workers)."""
    total = proc_cpu(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += proc_cpu(int(child))
    return total


def pid_of(name: str) -> int | None:
    """The first process whose command name is `name` (read only, to report its CPU)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    return int(entry.name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("receiver did not answer in time")


async def _jetstream(url: str, stream: str, delete: bool) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            held = (await js.stream_info(stream)).state.messages
        except NotFoundError:
            held = 0
        if delete:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
        return held
    finally:
        await nc.close()


def _http_stack() -> str:
    """What uvicorn picks by itself: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {http}/{loop}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent, not counted")
    parser.add_argument("--nats", default=os.environ.get("CRMSYNC_NATS_URL",
                                                         "nats://127.0.0.1:4222"))
    parser.add_argument("--embedded", action="store_true",
                        help="the SQLite inbox instead of JetStream")
    parser.add_argument("--port", type=int, default=0, help="receiver port (0: a free one)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=1,
                        help="receiver processes (`run webhooks --workers`)")
    parser.add_argument("--graph-share", type=float, default=0.0,
                        help="fraction of requests that are Graph change notifications")
    parser.add_argument("--log-level", default="INFO", help="receiver CRMSYNC_LOG_LEVEL "
                        "(INFO = production: one JSON line per delivery, sent to a file)")
    parser.add_argument("--profile", help="run the receiver under cProfile, stats to this file")
    args = parser.parse_args(argv)

    port = args.port or free_port()
    run = uuid.uuid4().hex[:10]
    stream = f"BENCH_{run}"
    tmp = tempfile.TemporaryDirectory(prefix="crmsync-webhook-bench-")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CRMSYNC_LOG_LEVEL": args.log_level,
           "CRMSYNC_GRAPH_CLIENT_STATE": CLIENT_STATE,
           "CRMSYNC_GMAIL_PUSH_AUTH": "off"}  # its Gmail pushes are unsigned
    inbox_db = Path(tmp.name) / "inbox.db"
    if args.embedded:
        env.pop("CRMSYNC_NATS_URL", None)
        env["CRMSYNC_WEBHOOK_INBOX"] = str(inbox_db)
    else:
        env.update({"CRMSYNC_NATS_URL": args.nats, "CRMSYNC_NATS_STREAM": stream,
                    "CRMSYNC_NATS_SUBJECT_PREFIX": f"bench{run}.webhooks"})
    warmup = int(args.warmup * args.rate)
    total = warmup + int(args.seconds * args.rate)
    graph_every = round(1 / args.graph_share) if args.graph_share > 0 else 0
    requests = [graph_request(port, n, run) if graph_every and n % graph_every == 0
                else gmail_request(port, n, run) for n in range(total)]
    cmd = [sys.executable]
    if args.profile:
        cmd += ["-m", "cProfile", "-o", args.profile]
    cmd += ["-m", "runners.entrypoints.cli", "--db", str(Path(tmp.name) / "unused.db"),
            "run", "webhooks", "--port", str(port), "--workers", str(args.workers)]
    log_path = Path(tmp.name) / "receiver.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stderr=log, stdout=log)
    try:
        wait_up(port, proc)
        # the first delivery opens the NATS connection and creates the stream: not measured
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(gmail_request(port, -1, run))
            first = s.recv(4096)
            if b" 202 " not in first.split(b"\r\n", 1)[0]:
                raise SystemExit(f"receiver refused the first push: {first[:200]!r}")
        load0 = os.getloadavg()
        nats_pid = None if args.embedded else pid_of("nats-server")
        nats0 = proc_cpu(nats_pid) if nats_pid else 0.0
        server0 = tree_cpu(proc.pid)
        wall0 = time.perf_counter()
        results, window, gen_cpu = asyncio.run(
            drive(port, requests, args.rate, warmup, args.connections, drain=30.0))
        wall = time.perf_counter() - wall0
        server_cpu = tree_cpu(proc.pid) - server0
        nats_cpu = proc_cpu(nats_pid) - nats0 if nats_pid else None
        load1 = os.getloadavg()
        counted = len(results.latencies)
        if args.embedded:
            with contextlib.closing(sqlite3.connect(inbox_db)) as db:
                held = int(db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0])
        else:
            held = asyncio.run(_jetstream(args.nats, stream, delete=False))
        expected = results.sent_ok_total + 1  # + the first push
        ms = [x * 1000 for x in results.latencies]
        mode = "SQLite inbox" if args.embedded else f"JetStream {args.nats} stream {stream}"
        print(f"receiver: crmsync run webhooks on 127.0.0.1:{port}, {mode}, "
              f"log level {args.log_level}, {_http_stack()}, nice {os.nice(0)}")
        print(f"load: {args.connections} keep-alive connections, graph share "
              f"{args.graph_share:.0%}, warm-up {warmup} requests ({args.warmup:g} s) not counted")
        print(f"requested rate:  {args.rate:8.0f} req/s for {args.seconds:g} s "
              f"({counted} counted requests)")
        print(f"achieved rate:   {counted / window if window > 0 else 0:8.0f} req/s "
              f"(counted answers / time from first counted due to last answer)")
        print(f"answers: 2xx {results.ok}, other {results.other or 0}")
        print("latency ms (scheduled send -> full response): "
              + "  ".join(f"p{q:g} {percentile(ms, q):.1f}" for q in (50, 90, 99, 99.9))
              + f"  max {max(ms, default=float('nan')):.1f}  target p99 < 50")
        answered = results.sent_ok_total + sum(results.other.values())
        print(f"receiver cpu per request: {server_cpu / max(1, answered) * 1000:.2f} ms "
              f"(so at most {answered / server_cpu if server_cpu else 0:.0f} req/s per core)")
        print(f"cpu over {wall:.1f} s: receiver {server_cpu / wall:.0%} of a core, "
              f"load generator {gen_cpu / wall:.0%} of a core"
              + ("" if nats_cpu is None else f", nats-server {nats_cpu / wall:.0%} of a core"))
        print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min); "
              f"{os.cpu_count()} cpus")
        print(f"durable: inbox holds {held} deliveries, {expected} answered 2xx "
              f"({'all durable' if held == expected else 'MISMATCH'})")
        return 0 if held == expected else 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not args.embedded:
            with contextlib.suppress(Exception):
                asyncio.run(_jetstream(args.nats, stream, delete=True))
        if proc.returncode not in (0, -signal.SIGINT) or os.environ.get("BENCH_SHOW_LOG"):
            sys.stderr.write(log_path.read_text()[-4000:])
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
