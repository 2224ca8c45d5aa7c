"""Timeline latency through the HTTP API, and how fast an owner change shows in queries.

    python -m benchmarks.generate --postgres URL ...      # the history (with `hot-contact`)
    python -m benchmarks.rebuild --postgres URL           # or a running projection runner
    python -m benchmarks.http_queries --postgres URL [--requests 3000] [--clients 1,4,16]

Starts `crmsync serve` and `crmsync run projections` as processes on loopback (PostgreSQL mode:
the server reads views, the runner writes them), then:
1. timeline: GET /v1/records/{record}/timeline for random (viewer, record) pairs the viewer may
   access (the record's owner, a manager above the owner, or the admin), one keep-alive client;
   prints p50/p95/p99/max. With --clients, once per count of concurrent closed-loop clients
   (each its own keep-alive connection), beside GET /healthz at the same concurrency on the
   same server (the raw HTTP floor: no view read, no access check).
2. owner change: ChangeOwner of `hot-contact` (10,000 linked threads) through POST /v1/commands,
   then polls the timeline of the new owner's manager until the answer reflects the new owner;
   prints the time from the command's answer to the first changed answer.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import httpx

from adapters.http.tokens import issue
from runners.bootstrap.config import open_engine


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) / 1024 for line in fh
                         if line.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def concurrent(base: str, requests: list[tuple[str, str]], clients: int
               ) -> tuple[list[float], float]:
    """(path, token) requests spread over `clients` threads, each its own keep-alive client
    sending its share back to back: every latency in ms, and the requests per second."""
    latencies: list[float] = []
    failed: list[str] = []
    lock = threading.Lock()

    def run(share: list[tuple[str, str]]) -> None:
        mine = []
        with httpx.Client(base_url=base, timeout=300) as client:
            for path, token in share:
                started = time.perf_counter()
                answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
                mine.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    failed.append(f"{answer.status_code} for {path}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(requests[i::clients],))
               for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise SystemExit(failed[0])
    return latencies, len(requests) / (time.perf_counter() - started)


def figures(latencies: list[float]) -> str:
    return (f"p50 {percentile(latencies, 50):.2f} ms, p95 {percentile(latencies, 95):.2f} ms, "
            f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms")


def wait_http(client: httpx.Client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.get("/openapi.json")
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def runner_caught_up(args: argparse.Namespace) -> bool:
    """The runner process has folded the log since it started (it logs 'caught up' or 'idle')."""
    try:
        with open(args.runner_log) as fh:
            return any('"idle"' in line or '"caught up"' in line for line in fh)
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", required=True)
    p.add_argument("--tenant", default="bench")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--runner-log", default="/tmp/crmsync-bench-runner.log")
    p.add_argument("--clients", default="", help="comma-separated client counts, e.g. 1,4,16")
    args = p.parse_args()
    secret = os.environ.setdefault("CRMSYNC_SECRET", "benchmark-secret-" + "x" * 32).encode()
    crmsync = shutil.which("crmsync") or "crmsync"
    env = {**os.environ, "CRMSYNC_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([crmsync, "--postgres", args.postgres, "serve", "--port",
                               str(args.port)], env=env)
    with open(args.runner_log, "w") as log:
        runner = subprocess.Popen([crmsync, "--postgres", args.postgres, "run", "projections",
                                   "--poll", "0.5"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    engine = open_engine("unused.db", args.postgres)
    try:
        base = f"http://127.0.0.1:{args.port}"
        with httpx.Client(base_url=base, timeout=300) as client:
            wait_http(client)
            head = engine.head()
            runner_log = "the runner folds the log on start"
            deadline = time.monotonic() + 600
            while min(engine.positions().values()) < head or not runner_caught_up(args):
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting: {runner_log}")
                time.sleep(1)
            sys.stdout.write(f"projection runner after folding the log on start: RSS "
                             f"{rss_mb(runner.pid):.0f} MB; server: {rss_mb(server.pid):.0f} MB\n")
            records = engine.committed_views().scan("directory", args.tenant, "record:")
            users = {k[5:]: rows[k[5:]] for k, rows in
                     engine.committed_views().scan("directory", args.tenant, "user:").items()}
            rng = random.Random(args.seed)
            pairs = []
            for key in rng.sample(sorted(records), min(len(records), args.requests)):
                doc = records[key][key[7:]]
                owner = doc["owner"]
                viewer = rng.choice([owner, *users[owner]["managers"], "u0"])
                pairs.append((viewer, doc["record"]))
            tokens = {u: issue(secret, args.tenant, u) for u in users}
            for viewer, record in pairs[:50]:  # warm up
                client.get(f"/v1/records/{record}/timeline",
                           headers={"Authorization": f"Bearer {tokens[viewer]}"})
            latencies, sizes = [], []
            for viewer, record in pairs:
                started = time.perf_counter()
                answer = client.get(f"/v1/records/{record}/timeline",
                                    headers={"Authorization": f"Bearer {tokens[viewer]}"})
                latencies.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise SystemExit(f"{answer.status_code} for {viewer} on {record}")
                sizes.append(len(answer.json()))
            sys.stdout.write(
                f"timeline over HTTP, {len(latencies)} requests ({sum(sizes) / len(sizes):.1f} "
                f"threads per answer): p50 {percentile(latencies, 50):.2f} ms, "
                f"p95 {percentile(latencies, 95):.2f} ms, p99 {percentile(latencies, 99):.2f} ms,"
                f" max {max(latencies):.2f} ms\n")
            for count in [int(c) for c in args.clients.split(",") if c]:
                paths = [(f"/v1/records/{record}/timeline", tokens[viewer])
                         for viewer, record in pairs]
                floor = [("/healthz", tokens[viewer]) for viewer, _ in pairs]
                raw, raw_rate = concurrent(base, floor, count)
                ours, rate = concurrent(base, paths, count)
                sys.stdout.write(
                    f"{count:3d} clients: timeline {figures(ours)}, {rate:.0f} req/s | raw "
                    f"GET /healthz {figures(raw)}, {raw_rate:.0f} req/s\n")

            hot = records.get("record:hot-contact")
            if hot is None:
                return
            old_owner = hot["hot-contact"]["owner"]
            new_owner = "u12" if old_owner != "u12" else "u13"
            manager = users[new_owner]["managers"][0]
            service = issue(secret, args.tenant, "bench", service=True)
            started = time.perf_counter()
            warm = client.post("/v1/commands", headers={"Authorization": f"Bearer {service}"},
                               json={"cmd": "ChangeDealStage", "tenant": args.tenant,
                                     "record": "deal-4", "stage": "open",
                                     "at": datetime.now(UTC).isoformat()})
            sys.stdout.write(f"first command after start (loads the tenant's state for the "
                             f"command side): {warm.status_code} in "
                             f"{time.perf_counter() - started:.1f} s\n")
            before = client.get("/v1/records/hot-contact/timeline",
                                headers={"Authorization": f"Bearer {tokens[manager]}"})
            command = {"cmd": "ChangeOwner", "tenant": args.tenant, "record": "hot-contact",
                       "owner": new_owner, "at": datetime.now(UTC).isoformat()}
            sent = client.post("/v1/commands", json=command,
                               headers={"Authorization": f"Bearer {service}"})
            answered = time.perf_counter()
            if sent.status_code != 200:
                raise SystemExit(f"ChangeOwner: {sent.status_code} {sent.text}")
            while True:
                now = client.get("/v1/records/hot-contact/timeline",
                                 headers={"Authorization": f"Bearer {tokens[manager]}"})
                if now.status_code == 200 and now.json() != (
                        before.json() if before.status_code == 200 else None):
                    break
                if time.perf_counter() - answered > 60:
                    raise SystemExit("the owner change did not show within 60 s")
            visible_after = time.perf_counter() - answered
            sys.stdout.write(
                f"owner change of hot-contact ({old_owner} -> {new_owner}, "
                f"{len(now.json())} threads now visible to {manager}, "
                f"{len(before.json()) if before.status_code == 200 else 0} before): visible in "
                f"queries {visible_after * 1000:.0f} ms after the command was answered\n")
    finally:
        server.terminate()
        runner.terminate()
        server.wait(10)
        runner.wait(10)
        engine.close()


if __name__ == "__main__":
    main()
