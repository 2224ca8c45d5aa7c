"""Resident memory of a live projection runner after it caught up (issue #15: < 250 MB on the 1M
history), beside the same interpreter with the engine imported and opened (the floor).

    python -m benchmarks.runner_memory --postgres URL [--log /tmp/runner.log]

Starts `crmsync run projections` as its own process on views that are current (run a rebuild or
a runner to the end first: otherwise the runner builds every row and its view writes are in the
figure too), waits for it to log that it caught up, then samples its RSS for a few seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks.rebuild import rss_mb
from runners.bootstrap.config import open_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", required=True)
    p.add_argument("--log", default="/tmp/crmsync-bench-runner-memory.log")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args()
    engine = open_engine("unused.db", args.postgres)
    head, views = engine.head(), min(engine.stores().views.positions().values())
    floor = rss_mb()  # this process: interpreter, the engine's imports, one engine open
    engine.close()
    if views < head:
        sys.stdout.write(f"note: views at {views} of {head}: the runner writes rows too\n")
    env = {**os.environ, "CRMSYNC_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "runners.entrypoints.cli", "--postgres", args.postgres,
               "run", "projections", "--poll", "0.5"]
    started = time.perf_counter()
    with open(args.log, "w") as log:
        runner = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        peak = 0.0
        while not caught_up(args.log):
            if runner.poll() is not None or time.perf_counter() - started > args.timeout:
                raise SystemExit(f"the runner did not catch up (exit {runner.returncode})")
            peak = max(peak, rss_mb(runner.pid))
            time.sleep(0.2)
        folded = time.perf_counter() - started
        after = []
        for _ in range(10):
            after.append(rss_mb(runner.pid))
            time.sleep(0.5)
        sys.stdout.write(
            f"projection runner on {head} events: caught up in {folded:.1f} s "
            f"({head / folded:,.0f} events/s, process start included); RSS after catching up "
            f"{max(after):.0f} MB (peak while folding {max(peak, *after):.0f} MB); floor (an "
            f"interpreter with the engine open): {floor:.0f} MB; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    finally:
        runner.terminate()
        runner.wait(20)


def caught_up(path: str) -> bool:
    try:
        with open(path) as fh:
            return any('"idle"' in line or '"caught up"' in line for line in fh)
    except OSError:
        return False


if __name__ == "__main__":
    main()
