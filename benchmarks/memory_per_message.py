"""Memory per synced message (issue #15): the peak RSS slope of the processes that fold a tenant.

    python -m benchmarks.memory_per_message [--dir DIR] [--small 40000] [--large 240000]

Two histories (`benchmarks.generate`: 50 users, 5,000 records, 100 hot threads, N messages)
are generated into SQLite files in DIR (kept: a second run reuses them). Each process below runs
on each history in a fresh interpreter and reports its peak resident memory (VmHWM); the slope
is (peak at large - peak at small) / (large - small messages), in bytes per message:

- raw: reads and decodes the tenant's events, folds nothing (the baseline, same run);
- command side: the tenant's state as the command side loads it (`EventStore.state`, with the
  RFC Message-ID index of S13), no snapshot;
- rebuild: `crmsync --db FILE rebuild` (every projection, into a copy of the file).

Target: at most 100 bytes per message for the command side and the rebuild.

    python -m benchmarks.memory_per_message --profile [--at large] [--small 40000] [--top 25]

instead rebuilds the small (or large) history once under tracemalloc (several times slower) and
prints what is allocated and still held, by file:line, when the log is folded (the peak's side:
the states, the versions remembered, the rows waiting to be written) and after the rebuild (what
a process keeps between batches: memos), and the most memory a batch allocated and freed again
(rows, sealed bytes: on top of what is held, at every batch). Compare the two sizes' figures:
their difference is the traced part of the slope, the rest is the allocator's.

    python -m benchmarks.memory_per_message --fold-time [--small 40000]

instead prints what the packed state costs in CPU: the small history's events decoded once,
then folded into a fresh state and every thread's live messages and participants read, best of
3 in a fresh interpreter (alternate it with another checkout's run: the machine is shared).

    python -m benchmarks.memory_per_message --first-command URL [--tenant bench]

instead times the first command after a start on a (large) PostgreSQL history: a fresh process
opens the engine and applies one ConfigureTenant (which loads the tenant's state) without a
snapshot, then with one (a first run takes it, the next one starts from it). `--lazy-mailbox
MBX` adds the same with mailboxes folded when first touched, a SyncMessage to MBX, and a sync
worker's first delivery to MBX (whole, then lazy). It appends to that database: run it on a
copy. Targets: < 10 s without a snapshot, < 1 s with one. The process's
CPU seconds are printed beside (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

TARGET = 100
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

# each prints its peak RSS (kB) as its last line; argv[1] is the SQLite file
_PEAK = ("import atexit\n"
         "def _peak():\n"
         "    for line in open('/proc/self/status'):\n"
         "        if line.startswith('VmHWM:'):\n"
         "            print('PEAK', line.split()[1], flush=True)\n"
         "atexit.register(_peak)\n")
PROGRAMS = {
    "raw": _PEAK + ("import sys\nfrom runners.bootstrap.config import open_engine\n"
                    "engine = open_engine(sys.argv[1], None)\n"
                    "for _ in engine.stores()[0].tenant_events('bench'):\n    pass\n"),
    "command side": _PEAK + ("import sys\nfrom runners.bootstrap.config import open_engine\n"
                             "engine = open_engine(sys.argv[1], None)\n"
                             "engine.stores()[0].snapshots = None\n"
                             "engine.state('bench')\n"),
    "rebuild": _PEAK + ("import runpy, sys\n"
                        "sys.argv = ['crmsync', '--db', sys.argv[1], 'rebuild']\n"
                        "runpy.run_module('runners.entrypoints.cli', run_name='__main__')\n"),
}


PROFILE = (
    "import sys, tracemalloc\nfrom runners.bootstrap.config import open_engine\n"
    "top = int(sys.argv[2])\n"
    "def show(label):\n"
    "    stats = tracemalloc.take_snapshot().statistics('lineno')\n"
    "    print(f'{label}: {sum(s.size for s in stats) / 1e6:.1f} MB held, peak since the '\n"
    "          f'last batch {tracemalloc.get_traced_memory()[1] / 1e6:.1f} MB')\n"
    "    for s in stats[:top]:\n"
    "        where = s.traceback[0]\n"
    "        print(f'{s.size / 1e6:8.2f} MB {s.count:9,} {where.filename}:{where.lineno}')\n"
    "engine = open_engine(sys.argv[1], None)\n"
    "tracemalloc.start(1)\n"
    "folded, transient = [], [0, 0]\n"
    "def progress(done, total):\n"
    "    held, peak = tracemalloc.get_traced_memory()\n"
    "    transient[:] = max(transient, [peak - held, done])\n"
    "    tracemalloc.reset_peak()\n"
    "    if done >= total and not folded:\n"
    "        folded.append(show('log folded'))\n"
    "engine.rebuild(None, progress)\n"
    "show('rebuilt')\n"
    "print(f'most allocated and freed within a batch: {transient[0] / 1e6:.1f} MB '\n"
    "      f'(the batch ending at {transient[1]:,})')\n")

FOLD_TIME = (
    "import sys, time\nfrom runners.bootstrap.config import open_engine\n"
    "from domain.state import TenantState, evolve\n"
    "events = list(open_engine(sys.argv[1], None).stores()[0].tenant_events('bench'))\n"
    "fold = read = 1e9\n"
    "for _ in range(3):\n"
    "    started = time.perf_counter()\n"
    "    state = TenantState('bench')\n"
    "    for seq, e in events:\n"
    "        evolve(state, e, seq)\n"
    "    fold = min(fold, time.perf_counter() - started)\n"
    "    started = time.perf_counter()\n"
    "    for tid in state.threads:\n"
    "        thread = state.threads[tid]\n"
    "        state.live_messages(thread), thread.participants\n"
    "    read = min(read, time.perf_counter() - started)\n"
    "n = len(state.messages)\n"
    "print(f'{len(events):,} events, {n:,} messages: fold {fold / n * 1e6:.1f} us/message, '\n"
    "      f'reading every thread\\'s live messages {read / n * 1e6:.1f} us/message')\n")

FIRST_COMMAND = _PEAK + (
    "import sys, time\nfrom datetime import UTC, datetime\n"
    "from domain.commands import parse_command\nfrom runners.bootstrap.config import open_engine\n"
    "started, cpu = time.perf_counter(), time.process_time()\n"
    "engine = open_engine('unused.db', sys.argv[1])\n"
    "command = parse_command({'cmd': 'ConfigureTenant', 'tenant': sys.argv[2],\n"
    "                         'mass_delete_threshold': 0.5} if len(sys.argv) < 4 else\n"
    "                        {'cmd': 'SyncMessage', 'tenant': sys.argv[2],\n"
    "                         'mailbox': sys.argv[3],\n"
    "                         'message': {'id': f'first-{time.time_ns()}', 'from': 'x@ext.test',\n"
    "                                     'to': ['y@ext.test'], 'subject': 's', 'body': '',\n"
    "                                     'sent_at': '2025-06-01T00:00:00+00:00',\n"
    "                                     'labels': ['INBOX']}})\n"
    "engine.execute(command, now=datetime.now(UTC), correlation_id='bench:first-command')\n"
    "print('SECONDS', time.perf_counter() - started, flush=True)\n"
    "print('CPU', time.process_time() - cpu, flush=True)\n")


# A sync worker's first delivery after a start: one new message from a provider that answers
# from memory, synced into `mailbox` as a delivery's would be (the worker reads the tenant's
# state, then applies the batch): the worker's read is the lazy state with that mailbox folded.
FIRST_DELIVERY = _PEAK + (
    "import sys, time\nfrom datetime import UTC, datetime, timedelta\n"
    "from adapters.providers.sources import Changes, ResyncPage\n"
    "from domain.events import MailMessage\nfrom runners.bootstrap.config import open_engine\n"
    "from runners.services.sync_worker import MailboxRef, SyncWorker\n"
    "started, cpu = time.perf_counter(), time.process_time()\n"
    "engine = open_engine('unused.db', sys.argv[1])\nengine.follow = False\n"
    "new = MailMessage.model_validate({'id': f'first-{time.time_ns()}', 'from': 'x@ext.test',\n"
    "    'to': ['y@ext.test'], 'subject': 's', 'body': '', 'labels': ['INBOX'],\n"
    "    'sent_at': (datetime.now(UTC) - timedelta(days=1)).isoformat()})\n"
    "class Source:\n"
    "    push = None\n"
    "    def changes(self, address, cursor):\n"
    "        return Changes(messages=[new], deleted_ids=[], new_cursor=f'{cursor}+1')\n"
    "    def resync(self, address, since):\n"
    "        yield ResyncPage(messages=[new], cursor='c1')\n"
    "    def close(self):\n"
    "        pass\n"
    "class Sources:\n"
    "    def open(self, tenant, mailbox):\n"
    "        return Source()\n"
    "out = SyncWorker(engine, Sources()).sync_mailbox(MailboxRef(sys.argv[2], sys.argv[3]),\n"
    "                                                'bench:first-delivery')\n"
    "assert out.synced == 1, out\n"
    "print('SECONDS', time.perf_counter() - started, flush=True)\n"
    "print('CPU', time.process_time() - cpu, flush=True)\n")


def first_command(url: str, tenant: str, mailbox: str | None = None) -> None:
    """The first command's time (and peak RSS) without a snapshot, then with one; with
    `mailbox`, also with mailboxes folded when first touched (CRMSYNC_LAZY_MAILBOXES=on,
    no snapshot): the same ConfigureTenant, then a SyncMessage to `mailbox`; and a sync
    worker's first delivery to `mailbox`, whole and lazy."""
    base = {k: v for k, v in _env().items() if k not in ("CRMSYNC_SNAPSHOTS",)}
    off = {**base, "CRMSYNC_SNAPSHOTS": "off"}
    runs: list[tuple[str, dict[str, str], float | None, list[str]]] = [
        ("without a snapshot", {**off, "CRMSYNC_LAZY_MAILBOXES": "off"}, 10.0, []),
        # a snapshot is taken by a whole fold only (a lazy state is partial): folded whole here;
        # the next run restores it with the default settings (lazy on)
        ("taking a snapshot", {**base, "CRMSYNC_LAZY_MAILBOXES": "off",
                               "CRMSYNC_SNAPSHOT_KEY": "bench-" + "k" * 40}, None, []),
        ("with a snapshot", {**base, "CRMSYNC_SNAPSHOT_KEY": "bench-" + "k" * 40}, 1.0, [])]
    if mailbox is not None:
        lazy = {**off, "CRMSYNC_LAZY_MAILBOXES": "on"}
        runs += [("lazy, ConfigureTenant", lazy, 10.0, []),
                 (f"lazy, SyncMessage {mailbox}", lazy, 10.0, [mailbox]),
                 (f"whole, delivery to {mailbox}", {**off, "CRMSYNC_LAZY_MAILBOXES": "off"},
                  10.0, ["delivery", mailbox]),
                 (f"lazy, delivery to {mailbox}", lazy, 10.0, ["delivery", mailbox])]
    for label, env, target, extra in runs:
        program, argv = FIRST_COMMAND, extra
        if extra[:1] == ["delivery"]:
            program, argv = FIRST_DELIVERY, extra[1:]
        done = subprocess.run([sys.executable, "-c", program, url, tenant, *argv],
                              check=True, env=env, capture_output=True, text=True)
        lines = dict(line.split(maxsplit=1) for line in done.stdout.strip().splitlines())
        seconds, peak = float(lines["SECONDS"]), int(lines["PEAK"]) / 1024
        shown = f" (target < {target:g} s)" if target is not None else ""
        # the process's CPU beside the wall time: on a shared machine the wall time is mostly
        # the load (PostgreSQL's own work is in neither)
        sys.stdout.write(f"first command {label:>24}: {seconds:6.2f} s{shown}, "
                         f"CPU {float(lines['CPU']):6.2f} s, peak {peak:.0f} MB\n")
        sys.stdout.flush()


def generate(path: Path, messages: int) -> None:
    if path.exists():
        return
    subprocess.run([sys.executable, "-m", "benchmarks.generate", "--db", str(path), "--users",
                    "50", "--records", "5000", "--hot-threads", "100", "--messages",
                    str(messages)], check=True, env=_env(), stdout=subprocess.DEVNULL)


def _env() -> dict[str, str]:
    return {**os.environ, "CRMSYNC_CONTENT_KEY": os.environ.get("CRMSYNC_CONTENT_KEY", KEY)}


def scratch_copy(db: Path) -> Path:
    """A copy of `db` to rebuild into, so each run starts alike (without a write-ahead log
    left by an earlier copy's run: SQLite would apply it to this one and find it malformed)."""
    work = db.with_suffix(".rebuild.db")
    drop(work)
    shutil.copyfile(db, work)
    return work


def drop(work: Path) -> None:
    for path in work.parent.glob(work.name + "*"):
        path.unlink()


def peak_kb(program: str, db: Path) -> int:
    work = scratch_copy(db) if program == "rebuild" else db
    done = subprocess.run([sys.executable, "-c", PROGRAMS[program], str(work)], check=True,
                          env=_env(), capture_output=True, text=True)
    if work != db:
        drop(work)
    return int(done.stdout.strip().splitlines()[-1].split()[1])


def profile(db: Path, top: int) -> None:
    work = scratch_copy(db)
    try:
        done = subprocess.run([sys.executable, "-c", PROFILE, str(work), str(top)], check=True,
                              env=_env(), capture_output=True, text=True)
    finally:
        drop(work)
    sys.stdout.write(done.stdout.replace(os.getcwd() + os.sep, ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dir", default="./bench-memory")
    p.add_argument("--small", type=int, default=40_000)
    p.add_argument("--large", type=int, default=240_000)
    p.add_argument("--first-command", metavar="URL", help="PostgreSQL URL of a large history")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--lazy-mailbox", metavar="MAILBOX",
                   help="with --first-command: also with CRMSYNC_LAZY_MAILBOXES=on, a "
                        "ConfigureTenant and a SyncMessage to MAILBOX")
    p.add_argument("--profile", action="store_true", help="tracemalloc the small rebuild")
    p.add_argument("--at", choices=("small", "large"), default="small",
                   help="with --profile: which history")
    p.add_argument("--fold-time", action="store_true", help="CPU of the fold and of reads")
    p.add_argument("--top", type=int, default=25, help="with --profile: lines shown")
    args = p.parse_args()
    if args.first_command:
        first_command(args.first_command, args.tenant, args.lazy_mailbox)
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    small, large = folder / f"m{args.small}.db", folder / f"m{args.large}.db"
    generate(small, args.small)
    if args.profile:
        if args.at == "large":
            generate(large, args.large)
        profile(large if args.at == "large" else small, args.top)
        return
    if args.fold_time:
        done = subprocess.run([sys.executable, "-c", FOLD_TIME, str(small)], check=True,
                              env=_env(), capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        return
    generate(large, args.large)
    for program in PROGRAMS:
        at_small, at_large = peak_kb(program, small), peak_kb(program, large)
        slope = (at_large - at_small) * 1024 / (args.large - args.small)
        verdict = "" if program == "raw" else f" (target <= {TARGET})"
        sys.stdout.write(f"{program:>12}: peak {at_small / 1024:6.1f} MB at {args.small:,} "
                         f"messages, {at_large / 1024:6.1f} MB at {args.large:,}: "
                         f"{slope:5.0f} bytes/message{verdict}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
