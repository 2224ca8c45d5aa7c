"""Mailboxes folded when first touched (issue #15): what a start and each mailbox's load cost,
through the product's path (`EventStore.state(tenant, lazy=True)`, `load_mailboxes`), and
whether the state, every mailbox loaded, equals the whole fold.

    CRMSYNC_CONTENT_KEY=... python -m benchmarks.lazy_mailbox_cost --postgres URL [--tenant T]

Prints the start (the tenant-wide events folded, the other mailboxes' events kept aside), the
load of each mailbox one after another (p50, p99, max, all), the whole fold of the same tenant
(today's start without lazy mailboxes), and `==` of the two states. The first command in a fresh
process, with and without the setting: `benchmarks.memory_per_message --first-command URL
--lazy-mailbox MAILBOX`. (Stop 23 measured a prototype of this design with this module before
the product had it; docs/decisions/architecture.md keeps its figures.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from domain.lazy_mailboxes import unloaded
from domain.state import TenantState

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def every_mailbox(url: str, tenant: str) -> bool:
    from runners.bootstrap.config import open_engine

    store = open_engine("unused.db", url).stores().events
    store.snapshots = None  # a start from the log, as after a deploy that changed the fold
    store.lazy_on()
    if store.lazy is None:
        raise SystemExit("lazy mailboxes need PostgreSQL without a compressor or cipher")
    started = time.perf_counter()
    state = store.state(tenant, lazy=True)
    waiting = sorted(unloaded(state) or ())
    print(f"start: {time.perf_counter() - started:.2f} s; {len(waiting)} mailboxes waiting")
    times = []
    for mailbox in waiting:
        t = time.perf_counter()
        assert store.load_mailboxes(state, frozenset((mailbox,))), mailbox
        times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=100)
    print(f"load of one mailbox ({len(times)}): p50 {q[49] * 1e3:.0f} ms, p99 "
          f"{q[98] * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms; all {sum(times):.1f} s")
    t = time.perf_counter()
    whole = TenantState(tenant, message_content=False)
    store._fold(whole)
    print(f"the whole fold (the start without lazy mailboxes): {time.perf_counter() - t:.1f} s")
    same = whole == state
    print(f"every mailbox loaded == the whole fold: {same}")
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", required=True)
    p.add_argument("--tenant", default="bench")
    args = p.parse_args()
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", KEY)
    sys.exit(0 if every_mailbox(args.postgres, args.tenant) else 1)


if __name__ == "__main__":
    main()
