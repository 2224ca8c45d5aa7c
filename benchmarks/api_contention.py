"""A reader's timeline latency while other callers write and read the past (issue #10, point 6).

    python -m benchmarks.api_contention [--db /tmp/contention.db]           # embedded SQLite
    python -m benchmarks.api_contention --postgres URL                      # + a runner process
    python -m benchmarks.api_contention --server-pythonpath /work/main      # another tree's code

Generates a tenant history (unless the tenant has one), brings the views up to date, starts
`crmsync serve` as a real uvicorn process on loopback (PostgreSQL mode: also `crmsync run
projections`), then measures one reader's GET /v1/records/{record}/timeline, one request at a
time on a keep-alive connection:
1. idle: nothing else running;
2. contended: while another caller posts --lines JSON Lines commands (CreateLead) in one request
   and --past-readers callers loop on `?at=` timelines (read from the views' histories).
Prints p50/p99/max of both phases side by side, the post's duration and results, and the `at`
reads answered. Figures, not assertions: this is not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta

import httpx
import orjson

from benchmarks.generate import T0, append_all, history
from benchmarks.http_queries import percentile, rss_mb, wait_http
from runners.bootstrap.config import open_engine

SECRET = "benchmark-secret-" + "x" * 32


def figures(latencies: list[float]) -> str:
    return (f"{len(latencies)} requests, p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms")


def timed_timelines(client: httpx.Client, pairs: list[tuple[str, str]],
                    tokens: dict[str, str], until: threading.Event | None,
                    count: int) -> list[float]:
    """Timeline requests one after the other: `count` of them, or until `until` is set."""
    latencies: list[float] = []
    i = 0
    while (len(latencies) < count) if until is None else not until.is_set():
        viewer, record = pairs[i % len(pairs)]
        i += 1
        started = time.perf_counter()
        answer = client.get(f"/v1/records/{record}/timeline",
                            headers={"Authorization": f"Bearer {tokens[viewer]}"})
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"timeline: {answer.status_code} {answer.text}")
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", help="PostgreSQL URL (with a search_path of its own)")
    p.add_argument("--db", help="SQLite file (default: a new one in a temporary directory)")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--records", type=int, default=2_000)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=500, help="idle timeline requests")
    p.add_argument("--lines", type=int, default=5_000)
    p.add_argument("--past-readers", type=int, default=8)
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--server-pythonpath", help="PYTHONPATH of the server processes")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="crmsync-contention-")
    db = args.db or os.path.join(workdir, "contention.db")
    engine = open_engine(db, args.postgres)
    try:
        if engine.state(args.tenant).seq == 0:
            started = time.perf_counter()
            count = append_all(engine.stores().events, args.tenant, history(
                args.tenant, args.users, args.records, args.messages, 200, 1), 1000)
            sys.stdout.write(f"generated {count} events in {time.perf_counter() - started:.1f} s"
                             "\n")
        head = engine.head()
        engine.catch_up()  # the views are current before the server starts (both modes)
        end_of_history = T0 + timedelta(milliseconds=10 * head)  # generate.py's event clock
        records = sorted(engine.committed_views().scan("directory", args.tenant, "record:"))
        users = {k[5:]: rows[k[5:]] for k, rows in
                 engine.committed_views().scan("directory", args.tenant, "user:").items()}
        pairs = []
        for key in records[:: max(1, len(records) // 400)]:
            doc = engine.committed_views().rows("directory", args.tenant, key)[key[7:]]
            pairs.append((doc["owner"], doc["record"]))
    finally:
        engine.close()
    run(args, db, pairs, list(users), end_of_history.isoformat(), workdir)


def run(args: argparse.Namespace, db: str, pairs: list[tuple[str, str]], users: list[str],
        past: str, workdir: str) -> None:
    crmsync = shutil.which("crmsync") or "crmsync"
    env = {**os.environ, "CRMSYNC_LOG_LEVEL": "WARNING", "CRMSYNC_SECRET": SECRET,
           "CRMSYNC_WEBHOOK_INBOX": os.path.join(workdir, "inbox.db")}
    env.pop("CRMSYNC_NATS_URL", None)
    if args.server_pythonpath:
        env["PYTHONPATH"] = args.server_pythonpath
    where = ["--postgres", args.postgres] if args.postgres else ["--db", db]
    procs = [subprocess.Popen([crmsync, *where, "serve", "--port", str(args.port)], env=env)]
    if args.postgres:
        procs.append(subprocess.Popen([crmsync, *where, "run", "projections", "--poll", "0.2"],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    tokens = issued(env, args.tenant, [*users, "bench"])
    service = tokens.pop("bench")
    base = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            wait_http(client)
            timed_timelines(client, pairs, tokens, None, 50)  # warm up
            idle = timed_timelines(client, pairs, tokens, None, args.requests)
            contended, post, as_of = contend(args, client, pairs, tokens, service, past)
        sys.stdout.write(
            f"{'embedded SQLite' if not args.postgres else 'PostgreSQL + runner'}, server code "
            f"{args.server_pythonpath or 'this tree'}; server RSS {rss_mb(procs[0].pid):.0f} MB\n"
            f"timeline idle:      {figures(idle)}\n"
            f"timeline contended: {figures(contended)}\n"
            f"  beside: {post}\n  and {as_of}\n")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def issued(env: dict[str, str], tenant: str, users: list[str]) -> dict[str, str]:
    """Tokens from the server's own code (its token format may differ from this tree's); the
    last user's is a service token."""
    script = ("import json, os, sys; from adapters.http.tokens import issue; users = sys.argv[2:]; "
              "secret = os.environ['CRMSYNC_SECRET'].encode(); print(json.dumps({u: issue("
              "secret, sys.argv[1], u, u == users[-1]) for u in users}))")
    out = subprocess.run([sys.executable, "-c", script, tenant, *users], env=env, cwd="/",
                         check=True, capture_output=True, text=True).stdout
    tokens: dict[str, str] = orjson.loads(out)
    return tokens


def contend(args: argparse.Namespace, client: httpx.Client, pairs: list[tuple[str, str]],
            tokens: dict[str, str], service: str, past: str
            ) -> tuple[list[float], str, str]:
    stop = threading.Event()
    past_ms: list[float] = []
    count_lock = threading.Lock()
    base = str(client.base_url)

    def past_reader(n: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as own:
            while not stop.is_set():
                viewer, record = pairs[(n * 7) % len(pairs)]
                started = time.perf_counter()
                answer = own.get(f"/v1/records/{record}/timeline", params={"at": past},
                                 headers={"Authorization": f"Bearer {tokens[viewer]}"})
                if answer.status_code != 200:
                    raise SystemExit(f"at: {answer.status_code} {answer.text}")
                with count_lock:
                    past_ms.append((time.perf_counter() - started) * 1000)

    run_id = f"{os.getpid()}-{int(time.time())}"
    body = b"".join(orjson.dumps({
        "cmd": "CreateLead", "tenant": args.tenant, "record": f"bulk-{run_id}-{i}",
        "owner": f"u{i % 10}", "name": f"Bulk {i}", "emails": [f"bulk{i}@{run_id}.test"]})
        + b"\n" for i in range(args.lines))
    outcome: dict[str, object] = {}

    def poster() -> None:
        with httpx.Client(base_url=base, timeout=600) as own:
            started = time.perf_counter()
            answer = own.post("/v1/commands", content=body, headers={
                "Authorization": f"Bearer {service}", "content-type": "application/x-ndjson"})
            outcome["seconds"] = time.perf_counter() - started
            outcome["answer"] = answer.json() if answer.status_code == 200 else answer.text
        stop.set()

    threads = [threading.Thread(target=past_reader, args=(n,)) for n in range(args.past_readers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the past readers are in flight before the post starts
    writer = threading.Thread(target=poster)
    writer.start()
    latencies = timed_timelines(client, pairs, tokens, stop, 0)
    for thread in [writer, *threads]:
        thread.join()
    answer = outcome.get("answer")
    result = (f"{answer['applied']} applied, {answer['rejected']} rejected"
              if isinstance(answer, dict) else f"failed: {answer}")
    post = (f"a post of {args.lines} lines answered in {outcome.get('seconds', 0):.1f} s "
            f"({result})")
    as_of = (f"{args.past_readers} past readers: {len(past_ms)} `at` timelines answered"
             + (f" (p50 {percentile(past_ms, 50):.0f} ms)" if past_ms else ""))
    return latencies, post, as_of


if __name__ == "__main__":
    main()
