"""Auditor and time-travel queries on a large history: CLI (a process per query) beside HTTP.

    python -m benchmarks.generate --postgres URL ...      # the history (with `hot-contact`)
    crmsync --postgres URL rebuild                        # views at lag 0
    python -m benchmarks.audit_queries --postgres URL [--full-replay] [--export]

Starts `crmsync serve` on loopback (PostgreSQL: it reads the views the rebuild left), then times
each query (median of `--repeats`) over HTTP, as a `crmsync --postgres URL query ...` process
(wall time of the process, start-up included) and as a line of one `crmsync query batch -`
process kept open (from the question written to its answer read), live and `at` a past time,
side by side: timeline (the hot
record), mailbox, records, sync status, contact merge, thread and explain (a hot thread, as its
owner u11), access (asked by the admin u0), and access history. `--full-replay` also times, in
this process, the full replay of the tenant's views that `at` answers cost before the views
kept their histories (about two minutes on the 1M history). `--export` times a full
`crmsync export` and prints its peak RSS (constant memory: pages of 5,000 events).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime

import httpx

from adapters.http.tokens import issue
from benchmarks.http_queries import wait_http

# domain time of event ~540,000 of the 1M benchmark history (10 ms apart): past the hot threads,
# half way through the mail (the 105k history: pass --at 2025-01-01T00:12:00+00:00)
AT = "2025-01-01T01:30:00+00:00"


def cli(crmsync: list[str], url: str, *args: str) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([*crmsync, "--postgres", url, *args], capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed, len(done.stdout)


class Batch:
    """One `crmsync query batch -` process: a question written, its answer line read."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)

    def ask(self, line: str) -> float:
        """Seconds from the question written to its whole answer read."""
        assert self.process.stdin is not None and self.process.stdout is not None
        started = time.perf_counter()
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        took = time.perf_counter() - started
        if not reply.startswith(b'{"line":') or b'"answer":' not in reply[:30]:
            raise SystemExit(f"batch {line!r}: {reply[:300]!r}")
        return took

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", required=True)
    p.add_argument("--tenant", default="bench")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--thread", default="mb11:hot5")
    p.add_argument("--record", default="hot-contact")
    p.add_argument("--mailbox", default="mb11")
    p.add_argument("--at", default=AT, help="the past domain time asked")
    p.add_argument("--only", default="", help="comma-separated query names to time (default: "
                   "all), e.g. access,access-history")
    p.add_argument("--repeats", type=int, default=3, help="times each query is asked (medians)")
    p.add_argument("--full-replay", action="store_true")
    p.add_argument("--export", action="store_true")
    args = p.parse_args()
    secret = os.environ.setdefault("CRMSYNC_SECRET", "benchmark-secret-" + "x" * 32).encode()
    # this checkout's code (with PYTHONPATH), whatever `crmsync` script is installed
    crmsync = [sys.executable, "-m", "runners.entrypoints.cli"]
    env = {**os.environ, "CRMSYNC_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([*crmsync, "--postgres", args.postgres, "serve", "--port",
                               str(args.port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    t, th, rec, box = args.tenant, args.thread, args.record, args.mailbox
    # (name, HTTP path, viewer, CLI arguments): each timed live and `at` AT
    queries: list[tuple[str, str, str, list[str]]] = [
        ("timeline", f"/v1/records/{rec}/timeline", "u11", ["timeline", "--record", rec]),
        ("mailbox", "/v1/mailbox", "u11", ["mailbox"]),
        ("records", "/v1/records", "u11", ["records"]),
        ("status", f"/v1/mailboxes/{box}/status", "u11", ["status", "--mailbox", box]),
        ("contact", f"/v1/contacts/{rec}/merge", "u11", ["contact", "--record", rec]),
        ("thread", f"/v1/threads/{th}", "u11", ["thread", "--thread", th]),
        ("explain", f"/v1/threads/{th}/explain", "u11", ["explain", "--thread", th]),
        ("access", f"/v1/threads/{th}/access", "u0", ["access", "--thread", th]),
    ]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as client:
            wait_http(client)

            def timed(name: str, path: str, viewer: str, argv: list[str], at: str | None
                      ) -> tuple[float, float, float]:
                """Medians of --repeats: over HTTP, as a `crmsync query` process, and as a line
                of the one `crmsync query batch` process."""
                headers = {"Authorization": f"Bearer {issue(secret, t, viewer)}"}
                words = [argv[0], "--tenant", t, "--viewer", viewer, *argv[1:],
                         *(["--at", at] if at else [])]
                https, clis, lines = [], [], []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    answer = client.get(path, params={"at": at} if at else {}, headers=headers)
                    https.append(time.perf_counter() - started)
                    if answer.status_code != 200:
                        raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                    clis.append(cli(crmsync, args.postgres, "query", *words, "--json")[0])
                    lines.append(batch.ask(" ".join(words)))
                return statistics.median(https), statistics.median(clis), \
                    statistics.median(lines)

            # untimed: the server's follower folds the log once at its first live request
            client.get(queries[0][1], headers={
                "Authorization": f"Bearer {issue(secret, t, queries[0][2])}"})
            started = time.perf_counter()
            batch = Batch([*crmsync, "--postgres", args.postgres, "query", "batch", "-"], env)
            batch.ask(f"status --tenant {t} --viewer u11")  # the batch process's start
            sys.stdout.write(f"`query batch` process: start and first answer "
                             f"{time.perf_counter() - started:.2f} s\n")
            sys.stdout.write(f"seconds, medians of {args.repeats}; batch: one line of the one "
                             "`crmsync query batch` process\n")
            sys.stdout.write(f"{'query':16} {'live HTTP':>9} {'live CLI':>9} {'live batch':>10} "
                             f"{'at HTTP':>9} {'at CLI':>9} {'at batch':>9} {'at CLI/HTTP':>11} "
                             f"{'at batch/HTTP':>13}\n")
            only = set(filter(None, args.only.split(",")))
            for name, path, viewer, argv in queries:
                if only and name not in only:
                    continue
                live = timed(name, path, viewer, argv, None)
                past = timed(name, path, viewer, argv, args.at)
                sys.stdout.write(f"{name:16} {live[0]:9.3f} {live[1]:9.2f} {live[2]:10.3f} "
                                 f"{past[0]:9.3f} {past[1]:9.2f} {past[2]:9.3f} "
                                 f"{past[1] / past[0]:11.1f} {past[2] / past[0]:13.1f}\n")
                sys.stdout.flush()
            if not only or "access-history" in only:
                http, took, line = timed("access-history", f"/v1/threads/{th}/access-history",
                                         "u0", ["access-history", "--thread", th], None)
                sys.stdout.write(f"{'access-history':16} {'':>9} {'':>9} {'':>10} {http:9.3f} "
                                 f"{took:9.2f} {line:9.3f} {took / http:11.1f} "
                                 f"{line / http:13.1f}\n")
            batch.close()
    finally:
        if args.full_replay:  # the baseline: what an `at` answer cost before the histories
            from runners.bootstrap.config import open_engine
            from runners.services.engine import replayed

            engine = open_engine("unused.db", args.postgres)
            started = time.perf_counter()
            replayed(engine.stores().events, t, datetime.fromisoformat(args.at))
            sys.stdout.write(f"full replay of the tenant's views to AT (in process, the old "
                             f"`at`): {time.perf_counter() - started:.1f} s\n")
            engine.close()
        server.terminate()
        server.wait(timeout=30)
    if args.export:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", *crmsync, "--postgres", args.postgres,
                               "export", "--tenant", t], capture_output=True, check=False)
        took = time.perf_counter() - started
        lines = done.stdout.count(b"\n")
        peak = int(done.stderr.decode().strip().splitlines()[-1]) / 1024
        sys.stdout.write(f"export: {lines} events in {took:.1f} s ({lines / took:.0f} events/s),"
                         f" peak RSS {peak:.0f} MB, {len(done.stdout) / 2**20:.0f} MiB written\n")


if __name__ == "__main__":
    main()
