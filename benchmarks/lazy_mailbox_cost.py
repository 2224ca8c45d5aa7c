"""Mailboxes folded when first touched (issue #15): a prototype's cost, not the product.

    CRMSYNC_CONTENT_KEY=... python -m benchmarks.lazy_mailbox_cost --postgres URL [--rounds 3]

The design measured (docs/decisions/architecture.md, "Mailboxes folded when first touched"): at
start the command side folds the tenant-wide events only, and keeps aside — undecoded — the few
mailbox-scoped events that are not synced mail, and the synced mail that carries a command id
(E5). A mailbox's state is folded the first time a command touches it, from its synced mail read
by the index the event store already has (`crmsync_event_thread`: thread ids begin with their
mailbox's id) and its events kept aside, in stream order. Nothing is written: no new table, no
new index, no cost on appends.

Parts (each in a fresh process, the whole first command as `benchmarks.memory_per_message`
times it, today's path alternated with the design's in every round):
- today: `EventStore.state` without a snapshot, then one ConfigureTenant;
- start: the tenant-wide read and fold, then the same ConfigureTenant (it touches no mailbox);
- start, then the first SyncMessage-sized touch of one mailbox: its mail read and folded.

Then, in this process: every mailbox loaded one after another (per-mailbox time: p50, p99,
max), and the state so built compared with the whole fold of the tenant (`==` of the states:
mailboxes, messages, threads, indexes, counters, E5 ids).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from adapters.eventstore.recorder_postgres import BoundedPostgresRecorder
from adapters.eventstore.scan_postgres import THREAD_OF
from adapters.eventstore.store import EventStore, stream_id
from domain import events as ev
from domain.state import SyncedMessage, TenantState, evolve, evolve_synced

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
WRITERS = (ev.MessageSynced, ev.EmailSent)
# events folded into a mailbox's state: those naming a mailbox (and the thread events, whose
# thread names it); MailboxConnected/AddressChanged are folded at start too (user addresses)
SCOPED = tuple(k for k in ev.EVENT_TYPES
               if "mailbox" in k.model_fields or k in (ev.ThreadLinked, ev.ThreadUnlinked))
AT_START_TOO = (ev.MailboxConnected, ev.MailboxAddressChanged)
Row = tuple[int, str, bytes]


class LazyStart:
    """The start and the per-mailbox loads of the design, over the product's store."""

    def __init__(self, store: EventStore, tenant: str) -> None:
        recorder = store.app.recorder
        assert isinstance(recorder, BoundedPostgresRecorder)
        self.store, self.tenant, self.stream = store, tenant, stream_id(tenant)
        self.datastore = recorder.datastore
        self.schema, self.table = recorder.datastore.schema, recorder.events_table_name
        self.kept: dict[str, list[Row]] = {}  # mailbox -> its events other than synced mail
        self.loaded: set[str] = set()

    def start(self) -> TenantState:
        """Tenant-wide events folded; mailbox-scoped non-mail events and keyed synced mail
        kept aside (their E5 ids taken now: a repeated key must stay a no-op)."""
        state = TenantState(self.tenant, message_content=False)
        writers = [get_topic(k) for k in WRITERS]
        query = SQL(
            "SELECT originator_version, topic, state FROM {s}.{t} WHERE originator_id = %s AND "
            "(topic <> ALL(%s) OR position('\"command_id\":\"'::bytea in state) > 0) "
            "ORDER BY originator_version").format(s=Identifier(self.schema),
                                                  t=Identifier(self.table))
        to_fold = self.store.mapper.to_fold
        scoped = {get_topic(k) for k in SCOPED}
        at_start = {get_topic(k) for k in AT_START_TOO}
        last = 0
        for seq, topic, body in self._rows(query, (self.stream, writers)):
            item = to_fold(self.stream, seq, topic, body, False)
            mailbox = _mailbox_of(item) if topic in scoped else None
            if mailbox is not None:
                self.kept.setdefault(mailbox, []).append((seq, topic, body))
                if topic in at_start:
                    evolve(state, item, seq)  # type: ignore[arg-type]
                elif item.command_id is not None:
                    state.applied_commands.add((item.actor, item.command_id))
            else:
                evolve(state, item, seq)  # type: ignore[arg-type]
            last = seq
        # the stream's head: seq and time as the whole fold leaves them
        head = SQL("SELECT originator_version, topic, state FROM {s}.{t} WHERE originator_id = "
                   "%s ORDER BY originator_version DESC LIMIT 1").format(
            s=Identifier(self.schema), t=Identifier(self.table))
        for seq, topic, body in self._rows(head, (self.stream,)):
            if seq > last:
                item = to_fold(self.stream, seq, topic, body, False)
                state.seq, state.last_at = seq, item.occurred_at
        for mailbox in state.mailboxes:  # as a state that never saw them: folded on load
            self.kept.setdefault(mailbox, [])
        state.mailboxes.clear()
        return state

    def load(self, state: TenantState, mailbox: str) -> int:
        """Fold `mailbox`'s events up to `state.seq` into `state`; how many."""
        prefix = _json_text(mailbox) + b":"
        query = SQL(
            "SELECT originator_version, topic, state FROM {s}.{t} WHERE originator_id = %s AND "
            "topic = ANY(%s) AND {s}.{fn}(state) >= %s AND {s}.{fn}(state) < %s AND "
            "originator_version <= %s ORDER BY originator_version").format(
            s=Identifier(self.schema), t=Identifier(self.table), fn=Identifier(THREAD_OF))
        upper = prefix[:-1] + bytes([prefix[-1] + 1])
        writers = [get_topic(k) for k in WRITERS]
        mail = list(self._rows(query, (self.stream, writers, prefix, upper, state.seq)))
        rows = sorted({*mail, *self.kept.get(mailbox, [])})
        to_fold, stream, seq, last_at = self.store.mapper.to_fold, self.stream, state.seq, \
            state.last_at
        for version, topic, body in rows:
            item = to_fold(stream, version, topic, body, False)
            if type(item) is SyncedMessage:
                if item.mailbox != mailbox:
                    continue  # another mailbox's id sharing the prefix: not this one's
                evolve_synced(state, item, version)
            else:
                evolve(state, item, version)  # type: ignore[arg-type]
        state.seq, state.last_at = seq, last_at
        self.loaded.add(mailbox)
        return len(rows)

    def _rows(self, query: Any, params: Iterable[Any]) -> Iterable[Row]:
        with self.datastore.get_connection() as conn, conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL jit = off")
            with conn.cursor(name="lazy", row_factory=tuple_row, binary=True) as curs:
                curs.itersize = 5000
                curs.execute(query, list(params))
                for version, topic, body in curs:
                    yield version, topic, bytes(body)


def _mailbox_of(item: object) -> str | None:
    for field in ("mailbox", "mailbox_id"):
        value = getattr(item, field, None)
        if isinstance(value, str):
            return value
    thread = getattr(item, "thread", None)
    return thread.split(":", 1)[0] if isinstance(thread, str) else None


def _json_text(text: str) -> bytes:
    import orjson

    return orjson.dumps(text)[1:-1]


# -- the first command, in fresh processes ------------------------------------------------------
_MAIL = ("{'cmd': 'SyncMessage', 'tenant': sys.argv[2], 'mailbox': 'mb11', 'message': {"
         "'id': 'lazy-' + str(time.time_ns()), 'from': 'x@ext.test', 'to': ['u11@corp.test'], "
         "'subject': 'lazy', 'body': '', 'sent_at': '2025-06-01T00:00:00+00:00', "
         "'message_id': '<m8998@ext.test>', 'labels': ['INBOX']}}")
LAZY = (
    "import sys, time\nfrom datetime import UTC, datetime\n"
    "from domain.commands import parse_command\nfrom runners.bootstrap.config import open_engine\n"
    "from benchmarks.lazy_mailbox_cost import LazyStart\n"
    "started, cpu = time.perf_counter(), time.process_time()\n"
    "engine = open_engine('unused.db', sys.argv[1])\n"
    "store = engine.stores().events\n"
    "lazy = LazyStart(store, sys.argv[2])\n"
    "state = lazy.start()\n"
    "phases = {'start': time.perf_counter() - started}\n"
    "if sys.argv[3] == 'mail':\n"
    "    t = time.perf_counter()\n"
    "    phases['events of mb11'] = lazy.load(state, 'mb11')\n"
    "    phases['load mb11'] = time.perf_counter() - t\n"
    "    command = parse_command(" + _MAIL + ")\n"
    "else:\n"
    "    command = parse_command({'cmd': 'ConfigureTenant', 'tenant': sys.argv[2],\n"
    "                             'mass_delete_threshold': 0.5})\n"
    "store._states[sys.argv[2]] = state  # what EventStore.state caches\n"
    "events = engine.execute(command, now=datetime.now(UTC), correlation_id='bench:lazy')\n"
    "print('SECONDS', time.perf_counter() - started, flush=True)\n"
    "print('CPU', time.process_time() - cpu, flush=True)\n"
    "print('PHASES', ' '.join(f'{k}={v:.3g}' for k, v in phases.items()), flush=True)\n")


def first_commands(url: str, tenant: str, rounds: int) -> None:
    from benchmarks.memory_per_message import _PEAK, FIRST_COMMAND

    env = {**os.environ, "CRMSYNC_SNAPSHOTS": "off",
           "CRMSYNC_CONTENT_KEY": os.environ.get("CRMSYNC_CONTENT_KEY", KEY)}
    runs = [("today, no snapshot", [FIRST_COMMAND]), ("design: ConfigureTenant",
            [_PEAK + LAZY, "config"]), ("design: SyncMessage", [_PEAK + LAZY, "mail"])]
    for r in range(rounds):
        for label, (program, *rest) in (runs if r % 2 == 0 else runs[::-1]):
            done = subprocess.run([sys.executable, "-c", program, url, tenant, *rest],
                                  check=True, env=env, capture_output=True, text=True)
            out = dict(line.split(maxsplit=1) for line in done.stdout.strip().splitlines()
                       if line.split(maxsplit=1)[0] in ("SECONDS", "CPU", "PEAK", "PHASES"))
            print(f"round {r + 1} first command, {label:>24}: {float(out['SECONDS']):6.2f} s, "
                  f"CPU {float(out['CPU']):6.2f} s, peak {int(out['PEAK']) / 1024:.0f} MB  "
                  f"{out.get('PHASES', '')}  load {os.getloadavg()[0]:.1f}", flush=True)


# -- every mailbox, and the state compared with the whole fold ------------------------------------
def every_mailbox(url: str, tenant: str) -> bool:
    from runners.bootstrap.config import open_engine

    store = open_engine("unused.db", url).stores().events
    lazy = LazyStart(store, tenant)
    started = time.perf_counter()
    state = lazy.start()
    print(f"start: {time.perf_counter() - started:.2f} s; {len(lazy.kept)} mailboxes, "
          f"{sum(map(len, lazy.kept.values()))} events kept aside")
    times, counts = [], []
    for mailbox in sorted(lazy.kept):
        t = time.perf_counter()
        counts.append(lazy.load(state, mailbox))
        times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=100)
    print(f"load of one mailbox ({len(times)}, {statistics.mean(counts):,.0f} events each): "
          f"p50 {q[49] * 1e3:.0f} ms, p99 {q[98] * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms; "
          f"all {sum(times):.1f} s")
    t = time.perf_counter()
    whole = TenantState(tenant, message_content=False)
    store._fold(whole)
    print(f"the whole fold (today's start): {time.perf_counter() - t:.1f} s")
    same = whole == state
    print(f"every mailbox loaded == the whole fold: {same}")
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", required=True, help="a copy of bench1m: SyncMessage appends")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", KEY)
    first_commands(args.postgres, args.tenant, args.rounds)
    sys.exit(0 if every_mailbox(args.postgres, args.tenant) else 1)


if __name__ == "__main__":
    main()
