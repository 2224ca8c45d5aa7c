"""`crmsync import-mail` throughput on the fedora-devel mbox, beside the raw MIME parse rate.

    python -m benchmarks.import_mail [--shared PATH] [--rounds N] [--postgres URL]

Unpacks `fedora-devel-2010-01/2010-January.txt.gz` into a temporary mbox, then per round:
* parse: split the mbox (`iter_mbox`) and `parse_message` every message, nothing else;
* import: `import_mail` into a fresh store (SQLite file as `crmsync --db`, or a fresh schema of
  `--postgres`), the same path as the command: MIME adapter, SyncMessage batches, the engine;
* again: the same import a second time (every message unchanged, S14).
Prints messages/s of each (median of the rounds) and the import's share of the parse rate.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from adapters.errors import UnparseableMessage
from adapters.providers.mime import parse_message
from benchmarks.corpus import FEDORA, shared_dir
from domain.commands import parse_command
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine
from runners.services.import_mail import import_mail, iter_mbox

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def parse_rate(mbox: Path) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    with mbox.open("rb") as fh:
        for raw in iter_mbox(fh):
            with contextlib.suppress(UnparseableMessage):
                parse_message(raw, "p")
            n += 1
    return n, n / (time.perf_counter() - started)


def _schema(postgres: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(sql)


def fresh_engine(tmp: Path, postgres: str | None, schema: str) -> Engine:
    if postgres:
        _schema(postgres, f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in postgres else "?"
        engine = open_engine("unused.db", f"{postgres}{sep}options=-csearch_path%3D{schema}")
    else:
        engine = open_engine(str(tmp / f"{uuid.uuid4().hex}.db"))
    for i, cmd in enumerate([
            {"cmd": "AddUser", "user": "ann", "email": "ann@acme.test", "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "list", "user": "ann", "provider": "imap",
             "address": "ann@acme.test"}]):
        parsed = parse_command({"tenant": "bench", "at": "2026-01-01T00:00:00Z", **cmd})
        engine.execute(parsed, now=T0, correlation_id=f"setup-{i}")
    return engine


def import_rates(mbox: Path, tmp: Path, postgres: str | None) -> tuple[int, float, float]:
    schema = f"bench_import_{uuid.uuid4().hex[:10]}"
    engine = fresh_engine(tmp, postgres, schema)
    try:
        started = time.perf_counter()
        first = import_mail(engine, "bench", "list", [str(mbox)])
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        again = import_mail(engine, "bench", "list", [str(mbox)])
        again_s = time.perf_counter() - started
    finally:
        engine.close()
        if postgres:
            _schema(postgres, f"DROP SCHEMA {schema} CASCADE")
    if again.imported or again.unchanged != first.imported:
        sys.exit(f"not idempotent: {first.summary()} then {again.summary()}")
    return first.imported, first.imported / first_s, again.unchanged / again_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", type=Path, help="the shared/ folder (default: found by the repo)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--postgres", metavar="URL", help="import into PostgreSQL instead of SQLite")
    args = p.parse_args()
    shared = args.shared or shared_dir()
    if shared is None:
        sys.exit("shared/ not found: pass --shared or set CRMSYNC_SHARED")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        mbox = tmp / "fedora.mbox"
        with gzip.open(shared / "corpora" / FEDORA / "2010-January.txt.gz") as src:
            mbox.write_bytes(src.read())
        size = mbox.stat().st_size
        parse, first, again = [], [], []
        for _ in range(max(1, args.rounds)):
            total, rate = parse_rate(mbox)
            parse.append(rate)
            imported, first_rate, again_rate = import_rates(mbox, tmp, args.postgres)
            first.append(first_rate)
            again.append(again_rate)
    store = "PostgreSQL" if args.postgres else "SQLite (embedded)"
    print(f"mbox: {total} messages ({size / 1e6:.1f} MB); store: {store}; "
          f"rounds: {len(parse)} (median)")
    print(f"raw MIME parse:        {statistics.median(parse):8.0f} messages/s")
    print(f"import-mail (new):     {statistics.median(first):8.0f} messages/s "
          f"({imported} imported; {statistics.median(first) / statistics.median(parse):.0%} of "
          f"the parse rate)")
    print(f"import-mail (again):   {statistics.median(again):8.0f} messages/s (all unchanged)")


if __name__ == "__main__":
    main()
