"""Auditor and time-travel queries on a large history: CLI (a process per query) beside HTTP.

    python -m benchmarks.generate --postgres URL ...      # the history (with `hot-contact`)
    crmsync --postgres URL rebuild                        # views at lag 0
    python -m benchmarks.audit_queries --postgres URL [--full-replay] [--export]

Starts `crmsync serve` on loopback (PostgreSQL: it reads the views the rebuild left), then times
each query once over HTTP and once as `crmsync --postgres URL query ...` (wall time of the
process, start-up included): the hot record's timeline and a hot thread live, the thread and
its explain `at` a past time, access at a time and access history of the hot thread (asked by
the admin u0). `--full-replay` adds the timeline `at` a past time, which still replays every
view of the tenant (about two minutes each on the 1M history). `--export` times a full
`crmsync export` and prints its peak RSS (constant memory: pages of 5,000 events).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import httpx

from adapters.http.tokens import issue
from benchmarks.http_queries import wait_http

AT = "2025-01-01T03:00:00+00:00"  # inside the hot threads' messages of the benchmark history


def cli(crmsync: str, url: str, *args: str) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([crmsync, "--postgres", url, *args], capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed, len(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", required=True)
    p.add_argument("--tenant", default="bench")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--thread", default="mb11:hot5")
    p.add_argument("--record", default="hot-contact")
    p.add_argument("--full-replay", action="store_true")
    p.add_argument("--export", action="store_true")
    args = p.parse_args()
    secret = os.environ.setdefault("CRMSYNC_SECRET", "benchmark-secret-" + "x" * 32).encode()
    crmsync = shutil.which("crmsync") or "crmsync"
    env = {**os.environ, "CRMSYNC_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([crmsync, "--postgres", args.postgres, "serve", "--port",
                               str(args.port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    t, th, rec = args.tenant, args.thread, args.record
    queries: list[tuple[str, str, dict[str, str], str, list[str]]] = [
        ("timeline live", f"/v1/records/{rec}/timeline", {}, "u11",
         ["timeline", "--record", rec]),
        ("thread live", f"/v1/threads/{th}", {}, "u11", ["thread", "--thread", th]),
        ("thread at", f"/v1/threads/{th}", {"at": AT}, "u11",
         ["thread", "--thread", th, "--at", AT]),
        ("explain at", f"/v1/threads/{th}/explain", {"at": AT}, "u11",
         ["explain", "--thread", th, "--at", AT]),
        ("access at", f"/v1/threads/{th}/access", {"at": AT}, "u0",
         ["access", "--thread", th, "--at", AT]),
        ("access-history", f"/v1/threads/{th}/access-history", {}, "u0",
         ["access-history", "--thread", th]),
    ]
    if args.full_replay:
        queries.append(("timeline at (full replay)", f"/v1/records/{rec}/timeline", {"at": AT},
                        "u11", ["timeline", "--record", rec, "--at", AT]))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as client:
            wait_http(client)
            sys.stdout.write(f"{'query':28} {'HTTP s':>8} {'CLI s':>8} {'CLI/HTTP':>8}\n")
            for name, path, params, viewer, argv in queries:
                headers = {"Authorization": f"Bearer {issue(secret, t, viewer)}"}
                started = time.perf_counter()
                answer = client.get(path, params=params, headers=headers)
                http = time.perf_counter() - started
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                took, _ = cli(crmsync, args.postgres, "query", argv[0], "--tenant", t,
                              "--viewer", viewer, *argv[1:], "--json")
                sys.stdout.write(f"{name:28} {http:8.2f} {took:8.2f} {took / http:8.1f}\n")
                sys.stdout.flush()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.export:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", crmsync, "--postgres", args.postgres,
                               "export", "--tenant", t], capture_output=True, check=False)
        took = time.perf_counter() - started
        lines = done.stdout.count(b"\n")
        peak = int(done.stderr.decode().strip().splitlines()[-1]) / 1024
        sys.stdout.write(f"export: {lines} events in {took:.1f} s ({lines / took:.0f} events/s),"
                         f" peak RSS {peak:.0f} MB, {len(done.stdout) / 2**20:.0f} MiB written\n")


if __name__ == "__main__":
    main()
