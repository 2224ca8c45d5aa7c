"""The projector's own cost in a build, without reading, decoding or storing, and a digest of
what it hands the store (rows and history versions) to compare two versions of the code.

    python -m benchmarks.rebuild_projector --db FILE [--digest] [--profile SORT]

The log's events are read and decoded once and kept beside the database (FILE.events.pickle,
reused by later runs: delete it when the log changes); the build then runs over them into a
store that keeps nothing, so its CPU time is the projector's (fold, rows, versions, final
rows). `--digest`: sha256 over every row and version handed over (sorted), equal between two
runs iff they write exactly the same rows and versions. `--profile SORT`: cProfile, printed
sorted by SORT (tottime, cumulative).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import os
import pickle
import pstats
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from domain.events import DomainEvent
from projections.build import build
from projections.history import BASES
from projections.ports import Changes, Stuck, StuckChanges, encode_doc
from projections.projector import Projector
from projections.rows import Rows
from runners.bootstrap.config import open_engine


@dataclass(frozen=True)
class Item:
    position: int
    seq: int
    event: DomainEvent


class Log:
    """The decoded events in memory (positions 1..n, as `benchmarks.generate` writes them)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def max_position(self) -> int:
        return self.items[-1].position if self.items else 0

    def read_log(self, after: int, limit: int) -> Sequence[Item]:
        return self.items[after:after + limit]


class Discard:
    """A view store that keeps nothing, or (digest) each row's and version's bytes."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.written = 0
        self.kept: dict[tuple[str, ...], bytes] = {}

    def positions(self) -> dict[str, int]:
        return {}

    def write(self, changes: Changes, positions: Mapping[str, int], *, fresh: bool = False,
              stuck: StuckChanges | None = None) -> None:
        for p, keyed in changes.items():
            for (tenant, key), rows in keyed.items():
                self.written += len(rows)
                if not self.keep:
                    continue
                if p in BASES:  # a version per row key (its time)
                    for rk, doc in rows.items():
                        self.kept[(p, tenant, key, rk)] = encode_doc(doc)
                else:  # the key's live rows (the last written win)
                    self.kept[(p, tenant, key)] = encode_doc(rows)

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        return {}

    # the rest of the port: a store that keeps nothing reads nothing back
    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        return {}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        return {}

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows:
        return {}

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]:
        return {}

    def forget_tenant(self, tenant: str, projections: Iterable[str]) -> None:
        pass

    def reset(self, projection: str) -> None:
        pass

    def checksum(self, projection: str) -> str:
        return self.digest()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        yield

    def digest(self) -> str:
        h = hashlib.sha256()
        for mark in sorted(self.kept):
            h.update(repr(mark).encode())
            h.update(self.kept[mark])
        return h.hexdigest()


def events(db: str) -> list[Item]:
    cache = db + ".events.pickle"
    if os.path.exists(cache):
        with open(cache, "rb") as fh:
            return [Item(*t) for t in pickle.load(fh)]
    engine = open_engine(db, None)
    items: list[tuple[int, int, DomainEvent]] = []
    position = 0
    while batch := engine.read_log(position, 1000):
        items += [(i.position, i.seq, i.event) for i in batch]
        position = batch[-1].position
    engine.close()
    with open(cache, "wb") as fh:
        pickle.dump(items, fh)
    return [Item(*t) for t in items]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", required=True)
    p.add_argument("--digest", action="store_true")
    p.add_argument("--profile", metavar="SORT")
    args = p.parse_args()
    items = events(args.db)
    if any(item.position != n for n, item in enumerate(items, 1)):
        raise SystemExit("positions are not 1..n: not a log of benchmarks.generate")
    store = Discard(args.digest)
    profile = cProfile.Profile() if args.profile else None
    gc.disable()  # as `crmsync rebuild` does (adapters.gc_pause)
    started, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    build(Log(items), store, Projector())
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    gc.enable()
    sys.stdout.write(f"{len(items)} events, {store.written} rows and versions handed over: "
                     f"{wall:.1f} s wall, {cpu:.1f} s CPU = {len(items) / cpu:,.0f} events per "
                     f"CPU second (load average {os.getloadavg()[0]:.1f})\n")
    if args.digest:
        sys.stdout.write(f"digest of rows and versions: {store.digest()} "
                         f"({len(store.kept)} live keys and versions)\n")
    if profile is not None:
        pstats.Stats(profile, stream=sys.stdout).sort_stats(args.profile).print_stats(30)


if __name__ == "__main__":
    main()
