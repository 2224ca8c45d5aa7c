"""Threading accuracy of the engine (SPEC S13) on a real mailing-list month.

    python -m benchmarks.threading_accuracy [--shared PATH]

Parses `fedora-devel-2010-01/2010-January.txt.gz` with `adapters.providers.mime`, syncs the
messages in date order into an in-memory engine (one SyncMessage each, no provider thread id),
reads each message's thread back from the engine's state and compares with MHonArc's "Archive by
Thread" page: pairwise precision and recall of "these two messages are in the same thread", with the corpus README's
documented exclusions (the thread of message 3; messages 153 and 285) and, for reference, without.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.corpus import (
    fedora_evaluated,
    fedora_evaluation,
    fedora_ground_truth,
    pair_scores,
    roots,
    shared_dir,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", type=Path, help="the shared/ folder (default: found by the repo)")
    args = p.parse_args()
    shared = args.shared or shared_dir()
    if shared is None:
        sys.exit("shared/ not found: pass --shared or set CRMSYNC_SHARED")
    started = time.perf_counter()
    score, threaded, total = fedora_evaluation(shared)
    elapsed = time.perf_counter() - started
    parents = fedora_ground_truth(shared)
    truth = {f"{i:05d}": f"{r:05d}" for i, r in roots(parents).items()}
    everything = pair_scores(truth, threaded.thread_of, set(threaded.thread_of))
    evaluated = {f"{i:05d}" for i in fedora_evaluated(parents)}

    print(f"messages in mbox:          {total}")
    print(f"parsed / rejected:         {len(threaded.thread_of)} / {len(threaded.rejected)}")
    for pid, reason in sorted(threaded.rejected.items()):
        print(f"  rejected {pid}: {reason}")
    print(f"parse + thread time:       {elapsed:.2f} s")
    print(f"evaluated (exclusions):    {len(evaluated & set(threaded.thread_of))} messages")
    for label, s in (("with README exclusions", score), ("all messages", everything)):
        print(f"-- {label}")
        print(f"   threads truth / engine: {s.true_threads} / {s.predicted_threads}")
        print(f"   pairs truth / engine / both: {s.true_pairs} / {s.predicted_pairs} / "
              f"{s.correct_pairs}")
        print(f"   precision {s.precision:.4f}   recall {s.recall:.4f}")
    # which true threads the engine split, and which engine threads mix true threads
    by_truth: dict[str, set[str]] = {}
    by_engine: dict[str, set[str]] = {}
    for m in sorted(threaded.thread_of):  # all messages; excluded ones are marked
        by_truth.setdefault(truth[m], set()).add(threaded.thread_of[m])
        by_engine.setdefault(threaded.thread_of[m], set()).add(truth[m])
    for root, threads in sorted(by_truth.items()):
        if len(threads) > 1:
            mark = "" if root in evaluated else " (README exclusion)"
            print(f"split: true thread rooted at {root}{mark} -> {sorted(threads)}")
    for thread, truths in sorted(by_engine.items()):
        if len(truths) > 1:
            print(f"merged: engine thread {thread} <- true roots {sorted(truths)}")


if __name__ == "__main__":
    main()
