"""Projection rebuild rate beside the raw rate of reading and decoding the same events.

    python -m benchmarks.generate --postgres URL ...   # first
    python -m benchmarks.rebuild --postgres URL [--projection NAME]

Prints: events, raw read+decode events/s (select_notifications + our mapper), the same through
`EventStore.read_log` (what the projector uses), then runs `crmsync rebuild` as its own process
(as an operator does; `--in-process` rebuilds here instead, with RSS per phase) and prints its
events/s (every projection into new tables, swapped in) and its peak resident memory.
`--in-process --profile FILE`: the same under cProfile, with the time per phase (read, decode,
evolve, rows, writes; `benchmarks.rebuild_profile`).
`--without-histories`: the same rebuild with no history version computed or written (a
counterfactual, `benchmarks.without_histories`): what the histories cost, and what the rest of
a rebuild reaches without them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time

from adapters.gc_pause import paused_gc
from domain.state import evolve
from domain.tenant import TenantState
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine


def rss_mb(pid: int | None = None) -> float:
    try:
        fh = open(f"/proc/{pid or 'self'}/status")  # noqa: SIM115 (the process may be gone)
    except OSError:
        return 0.0
    with fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The direct children of `pid` (from /proc/*/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database (from /proc, sampled: a
    backend's last sample before it exits counts; the server's shared WAL writer and
    checkpointer are not in it, so it is a lower bound of PostgreSQL's share)."""

    def __init__(self, url: str | None) -> None:
        self.database = (url or "").rsplit("/", 1)[-1].split("?", 1)[0]
        self.seen: dict[int, float] = {}
        self.others: set[int] = set()  # pids that are not such backends (not read again)
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        if not self.database:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self.others:
                continue
            try:
                if int(entry) not in self.seen:
                    with open(f"/proc/{entry}/cmdline", "rb") as fh:
                        cmdline = fh.read()
                    if not cmdline.startswith(b"postgres: ") or \
                            f" {self.database} ".encode() not in cmdline:
                        if b"postgres" not in cmdline:  # a new backend's title comes later
                            self.others.add(int(entry))
                        continue
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.seen[int(entry)] = (int(fields[11]) + int(fields[12])) / self.tick

    def total(self) -> float:
        return sum(self.seen.values())


def fresh_process(args: argparse.Namespace, total: int, raw: float) -> None:
    """`crmsync rebuild` as its own process, as an operator runs it: its wall time and the peak
    resident memory of each of its processes (the coordinator and its part processes) and of
    all of them together, sampled every 0.1 s from /proc."""
    command = [sys.executable, "-m", "benchmarks.without_histories" if args.without_histories
               else "runners.entrypoints.cli"]
    command += ["--postgres", args.postgres] if args.postgres else ["--db", args.db]
    command += ["rebuild"] + (["--projection", args.projection] if args.projection else [])
    command += ["--parts", str(args.parts)] if args.parts else []
    started = time.perf_counter()
    cpu_before = _children_cpu()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    backends = BackendCpu(args.postgres)
    backends.sample()
    before = dict(backends.seen)  # backends already open (this process's own)
    peak, peak_total, seen = 0.0, 0.0, 1
    while proc.poll() is None:
        backends.sample()
        tree = [proc.pid, *children(proc.pid)]
        seen = max(seen, len(tree))
        sizes = [rss_mb(pid) for pid in tree]
        peak, peak_total = max(peak, *sizes), max(peak_total, sum(sizes))
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"crmsync rebuild failed with exit code {proc.returncode}")
    what = args.projection or "all projections"
    what += ", without histories" if args.without_histories else ""
    sys.stdout.write(f"rebuild (`crmsync rebuild`, {what}): "
                     f"{total / elapsed:,.0f} events/s ({elapsed:.1f} s, process start "
                     f"included; {100 * total / elapsed / raw:.0f}% of raw)\n")
    sys.stdout.write(f"  CPU of its processes: {cpu:.1f} s = {total / cpu:,.0f} events per CPU "
                     f"second ({cpu / elapsed:.2f} cores busy on average)\n")
    if args.postgres:
        pg = backends.total() - sum(before.values())
        sys.stdout.write(f"  CPU of its PostgreSQL backends (sampled): {pg:.1f} s "
                         f"({pg / elapsed:.2f} cores busy on average); both: "
                         f"{total / (cpu + pg):,.0f} events per CPU second; load average "
                         f"{os.getloadavg()[0]:.1f} at the end\n")
    sys.stdout.write(f"peak RSS of one rebuild process: {peak:.0f} MB; of all {seen} together: "
                     f"{peak_total:.0f} MB (sampled every 0.1 s)\n")


def fold_ceiling(engine: Engine, batch_size: int) -> None:
    """Read the log as the rebuild does and fold every event into its tenant's state as the
    projector does (`TenantState(index_rfc=False)`, the cyclic collector paused as
    `crmsync rebuild` pauses it), computing and writing no row. Every part of a rebuild reads
    the log and folds the tenant-wide events and its share of the mail, so N parts on N cores
    cannot go faster than N times this rate per CPU second, whatever the rows cost."""
    started, cpu = time.perf_counter(), time.process_time()
    with paused_gc():
        folded = _fold_all(engine, batch_size)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    cores = os.cpu_count() or 1
    sys.stdout.write(f"read+decode+fold:        {folded / elapsed:,.0f} events/s, "
                     f"{folded / cpu:,.0f} per CPU second (EventStore.read_log and `evolve`, "
                     f"no rows); a rebuild on {cores} cores cannot exceed "
                     f"{cores * folded / cpu:,.0f} events/s; peak RSS "
                     f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n")


def _fold_all(engine: Engine, batch_size: int) -> int:
    states: dict[str, TenantState] = {}
    position = folded = 0
    while True:
        batch = engine.read_log(position, batch_size)
        if not batch:
            break
        for item in batch:
            tenant = item.event.tenant
            state = states.get(tenant)
            if state is None:
                state = states[tenant] = TenantState(tenant, index_rfc=False)
            evolve(state, item.event, item.seq)
        folded += len(batch)
        position = batch[-1].position
    return folded


def _children_cpu() -> float:
    """User + system CPU of the waited-for children (and theirs) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres")
    p.add_argument("--db", default="./bench.db")
    p.add_argument("--parts", type=int, help="`crmsync rebuild --parts N` (default: its own)")
    p.add_argument("--projection")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--in-process", action="store_true",
                   help="rebuild in this process (RSS per phase) instead of `crmsync rebuild`")
    p.add_argument("--no-read-log", action="store_true",
                   help="skip the second pass through EventStore.read_log (long logs)")
    p.add_argument("--fold-ceiling", action="store_true",
                   help="also read and fold every event into its tenant's state, writing no "
                        "row: the most a one-process rebuild of one tenant can reach here")
    p.add_argument("--profile", metavar="FILE",
                   help="with --in-process: cProfile the rebuild, print time per phase")
    p.add_argument("--without-histories", action="store_true",
                   help="no history version computed or written (a counterfactual, not a "
                        "product mode: benchmarks.without_histories)")
    args = p.parse_args()
    if args.without_histories and args.in_process:
        import benchmarks.without_histories  # noqa: F401  (replaces Versions.flush at import)
    engine = open_engine(args.db, args.postgres)
    total = engine.head()

    # The raw rate the issue names: eventsourcing's select_notifications + our mapper's decode.
    recorder, mapper = engine.stores().events.app.recorder, engine.stores().events.app.mapper
    started, cpu = time.perf_counter(), time.process_time()
    position = read = 0
    while True:
        notifications = recorder.select_notifications(start=position, limit=args.batch,
                                                      inclusive_of_start=False)
        if not notifications:
            break
        for n in notifications:
            mapper.to_domain_event(n)
        read += len(notifications)
        position = notifications[-1].id
    raw = read / (time.perf_counter() - started)
    raw_cpu = read / (time.process_time() - cpu)
    # What the projector reads through: EventStore.read_log (binary SELECT + the same decode).
    started = time.perf_counter()
    position = ours = 0
    while not args.no_read_log:
        batch = engine.read_log(position, args.batch)
        if not batch:
            break
        ours += len(batch)
        position = batch[-1].position
    log_rate = ours / (time.perf_counter() - started) if ours else 0.0
    sys.stdout.write(f"events in log:           {total}\n")
    sys.stdout.write(f"raw read+decode:         {raw:,.0f} events/s "
                     f"(select_notifications + mapper); {raw_cpu:,.0f} per CPU second of "
                     f"this process; load average {os.getloadavg()[0]:.1f} on "
                     f"{os.cpu_count()} CPUs\n")
    if not args.no_read_log:  # skipped: no rate to print (it printed "0 events/s")
        sys.stdout.write(f"read_log read+decode:    {log_rate:,.0f} events/s "
                         "(EventStore.read_log, what the projector reads through)\n")
    if args.fold_ceiling:
        fold_ceiling(engine, args.batch)

    if not args.in_process:
        fresh_process(args, total, raw)
        engine.close()
        return
    peak = {"fold": rss_mb(), "rows": 0.0}
    phase = ["fold"]
    done = threading.Event()

    def sample() -> None:  # every 0.1 s, whichever phase the rebuild is in
        while not done.wait(0.1):
            peak[phase[0]] = max(peak[phase[0]], rss_mb())

    def progress(position: int, target: int) -> None:
        if position >= target:
            phase[0] = "rows"  # the log is folded: rows from the final state are written next

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu = time.perf_counter(), time.process_time()
    if args.profile:
        from benchmarks.rebuild_profile import profiled

        report = profiled(lambda: engine.rebuild(args.projection, progress), args.profile)
    else:
        engine.rebuild(args.projection, progress)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    done.set()
    sampler.join()
    what = args.projection or "all projections"
    what += ", without histories" if args.without_histories else ""
    sys.stdout.write(f"rebuild in this process ({what}): "
                     f"{total / elapsed:,.0f} events/s ({elapsed:.1f} s, "
                     f"{100 * total / elapsed / raw:.0f}% of raw); {total / cpu:,.0f} events per "
                     f"CPU second ({100 * total / cpu / raw_cpu:.0f}% of raw per CPU second)\n")
    sys.stdout.write(f"peak RSS while folding:   {peak['fold']:.0f} MB; while writing rows from "
                     f"the final state: {peak['rows']:.0f} MB; process max "
                     f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
                     "(this process also did the raw reads above)\n")
    if args.profile:
        sys.stdout.write(report)
    engine.close()


if __name__ == "__main__":
    main()
