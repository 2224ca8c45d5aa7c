"""Per-message facts in the store (issue #15): what it would cost and gain to keep the facts the
command side reads of each message in PostgreSQL instead of folding every message at start.

    CRMSYNC_CONTENT_KEY=... python -m benchmarks.mail_facts_cost --postgres URL PART [...]

A measurement with a prototype schema (`mail_facts`, in the measured database), not the product.
Run it on copies of a history (`createdb -T bench1m facts_x`): every part writes.

- `build`: fill mail_facts from the stored MessageSynced/EmailSent by SQL (a one-off backfill):
  time, rows, size.
- `backfill`: the same for one tenant (`--tenant`) through the writer's Python code.
- `check`: compare the facts with each tenant's folded state (`--tenants`; folds the whole tenant).
- `start [--current URL2] [--rounds 3]`: the first command after a start without folding
  messages (the stream read without MessageSynced/EmailSent, the rest folded, the mailboxes'
  counters from their facts row; one aggregate over the facts timed beside), beside today's
  first command without a snapshot (`benchmarks.memory_per_message`'s program) on URL2,
  alternated, each in a fresh process.
- `ingest [--pairs 3] [--messages 10000]`: new tenants' MessageSynced appended in batches of 500
  as the sync runners do, without and with their facts rows in the same transaction, alternated.
- `prefetch [--batches 300] [--decide]`: the facts one SyncMessage batch of 500 needs (dedup by
  id, S13 by Message-ID / In-Reply-To / References, the threads found), one pipelined round trip,
  p50/p99; `--decide` also folds the tenant and times today's decide+fold of the same batches,
  then decides them again on the state without messages plus each batch's facts (compared).

Every part prints CPU beside wall time; "server CPU" is that of the PostgreSQL backends connected
to the measured database (so: a database only this benchmark uses).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from psycopg.rows import DictRow, tuple_row

from adapters.eventstore.recorder_postgres import BoundedPostgresRecorder
from adapters.eventstore.store import EventStore, stream_id
from domain import commands as c
from domain import events as ev
from domain.message_table import MessageTable
from domain.state import SyncedMessage, TenantState, evolve

S = "mail_facts"
SYNCED, SENT = get_topic(ev.MessageSynced), get_topic(ev.EmailSent)
SKIPPED = (ev.MessageSynced, ev.EmailSent)  # folded into the facts, not into the state
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
DDL = f"""
CREATE SCHEMA IF NOT EXISTS {S};
CREATE TABLE IF NOT EXISTS {S}.message (tenant text, mailbox text, id text, thread text NOT NULL,
    rfc_id text, seq bigint NOT NULL, sent boolean NOT NULL, deleted boolean NOT NULL,
    read boolean NOT NULL, labels text NOT NULL, PRIMARY KEY (tenant, mailbox, id));
CREATE TABLE IF NOT EXISTS {S}.rfc (tenant text, mailbox text, rfc text, thread text NOT NULL,
    present boolean NOT NULL, PRIMARY KEY (tenant, mailbox, rfc));
CREATE TABLE IF NOT EXISTS {S}.thread (tenant text, id text, mailbox text NOT NULL,
    created_seq bigint NOT NULL, crm boolean NOT NULL, PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS {S}.mailbox (tenant text, mailbox text, stored bigint NOT NULL,
    synced bigint NOT NULL, last_synced_seq bigint, PRIMARY KEY (tenant, mailbox));
"""
# S14: one row per (mailbox, id); S13: the first message with a Message-ID wins (`present`), a
# referenced id never synced leads to the first referencing message's thread until it arrives
# (`present` false: jwz's empty container); a thread keeps its first message's seq (S9).
WRITE = [
    f"INSERT INTO {S}.message SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::bigint[], %s::bool[], %s::bool[], %s::bool[], %s::text[]) "
    "ON CONFLICT DO NOTHING",
    f"INSERT INTO {S}.thread SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::bigint[], "
    "%s::bool[]) ON CONFLICT DO NOTHING",
    f"INSERT INTO {S}.rfc AS r SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::bool[]) ON CONFLICT (tenant, mailbox, rfc) DO UPDATE SET thread = EXCLUDED.thread, "
    "present = true WHERE EXCLUDED.present AND NOT r.present",
    # the counters MessageSynced's fold kept (L5's `stored`, the sync status): a row per mailbox
    f"INSERT INTO {S}.mailbox AS b SELECT %s, * FROM unnest(%s::text[], %s::bigint[], "
    "%s::bigint[], %s::bigint[]) ON CONFLICT (tenant, mailbox) DO UPDATE SET stored = b.stored "
    "+ EXCLUDED.stored, synced = b.synced + EXCLUDED.synced, last_synced_seq = "
    "greatest(b.last_synced_seq, EXCLUDED.last_synced_seq)"]
_SRC = ("(SELECT originator_version AS seq, topic = %(sent)s AS sent, j->>'tenant' AS tenant, "
        "j->>'mailbox' AS mailbox, j->>'thread' AS thread, j->'message' AS m, "
        "coalesce((j->>'crm_initiated')::boolean, topic = %(sent)s) AS crm FROM (SELECT *, "
        # the erased placeholder's escaped NUL: PostgreSQL's json refuses it (no field read here)
        "replace(convert_from(state, 'UTF8'), '\\u0000', '')::json AS j FROM crmsync_events "
        "WHERE topic IN (%(synced)s, %(sent)s)) AS e) AS src")
BUILD = [
    f"INSERT INTO {S}.message SELECT tenant, mailbox, m->>'id', thread, m->>'message_id', seq, "
    f"sent, false, (m->>'read')::boolean, (m->'labels')::text FROM {_SRC} ON CONFLICT DO NOTHING",
    f"INSERT INTO {S}.thread SELECT DISTINCT ON (tenant, thread) tenant, thread, mailbox, seq, "
    f"crm FROM {_SRC} ORDER BY tenant, thread, seq",
    f"INSERT INTO {S}.rfc SELECT DISTINCT ON (tenant, mailbox, rfc_id) tenant, mailbox, rfc_id, "
    f"thread, true FROM {S}.message WHERE rfc_id IS NOT NULL ORDER BY tenant, mailbox, rfc_id, seq",
    f"INSERT INTO {S}.rfc SELECT DISTINCT ON (tenant, mailbox, ref) tenant, mailbox, ref, thread, "
    f"false FROM {_SRC}, LATERAL (SELECT m->>'in_reply_to' AS ref UNION ALL SELECT "
    "json_array_elements_text(CASE json_typeof(m->'references') WHEN 'array' THEN "
    "m->'references' ELSE '[]' END)) AS refs WHERE ref IS NOT NULL AND ref IS DISTINCT FROM "
    "m->>'message_id' ORDER BY tenant, mailbox, ref, seq ON CONFLICT DO NOTHING"]
# The mailbox counters as one aggregate over the facts (instead of the counters table)
COUNTED = (f"SELECT mailbox, count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE NOT "
           f"sent), max(seq) FILTER (WHERE NOT sent) FROM {S}.message WHERE tenant = %s "
           "GROUP BY mailbox")
BUILD.append(f"INSERT INTO {S}.mailbox SELECT tenant, mailbox, count(*) FILTER (WHERE NOT "
             f"deleted), count(*) FILTER (WHERE NOT sent), max(seq) FILTER (WHERE NOT sent) FROM "
             f"{S}.message GROUP BY tenant, mailbox")
COUNTERS = f"SELECT mailbox, stored, synced, last_synced_seq FROM {S}.mailbox WHERE tenant = %s"
# What one SyncMessage batch reads before `decide` (one round trip, pipelined)
PREFETCH = [
    f"SELECT id, thread, deleted, read, labels FROM {S}.message WHERE tenant = %s AND "
    "mailbox = %s AND id = ANY(%s)",
    f"SELECT rfc, thread, present FROM {S}.rfc WHERE tenant = %s AND mailbox = %s AND "
    "rfc = ANY(%s)",
    # one array, not `id IN (...) OR ...`: with OR the planner scanned every thread
    f"SELECT id, mailbox, created_seq, crm FROM {S}.thread WHERE tenant = %s AND id = "
    f"ANY(%s::text[] || ARRAY(SELECT thread FROM {S}.rfc WHERE tenant = %s AND mailbox = %s "
    "AND rfc = ANY(%s)))"]


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def backends_cpu(conn: psycopg.Connection[Any]) -> dict[int, float]:
    """CPU seconds of every server process connected to this database (only this benchmark
    uses it), from /proc: the facts' cost is mostly the server's."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = "
                               "current_database()").fetchall():
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            out[pid] = (int(stat[11]) + int(stat[12])) / tick
        except OSError:
            continue
    return out


def cpu_since(conn: psycopg.Connection[Any], before: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in backends_cpu(conn).items())


# -- build and check ------------------------------------------------------------------------------
def build(url: str) -> None:
    with connect(url) as conn:
        conn.execute(DDL)
        conn.execute(f"TRUNCATE {S}.message, {S}.rfc, {S}.thread, {S}.mailbox")
        for sql in BUILD:
            started, before = time.perf_counter(), backends_cpu(conn)
            done = conn.execute(sql, {"synced": SYNCED, "sent": SENT})
            print(f"build {sql.split()[2]:>18}: {done.rowcount:>9,} rows in "
                  f"{time.perf_counter() - started:6.1f} s (server CPU "
                  f"{cpu_since(conn, before):.1f} s)", flush=True)
        conn.execute(f"ANALYZE {S}.message; ANALYZE {S}.rfc; ANALYZE {S}.thread")
        for table in ("message", "rfc", "thread", "mailbox", "public.crmsync_events"):
            name = table if "." in table else f"{S}.{table}"
            row = conn.execute("SELECT pg_table_size(%s), pg_indexes_size(%s)",
                               (name, name)).fetchone()
            assert row is not None
            print(f"size {name:>22}: table {row[0] / 1e6:7.1f} MB, indexes {row[1] / 1e6:7.1f} MB")


MAIL_PARTS = ("messages", "threads", "missing_parents", "address_threads")


def check(url: str, tenant: str) -> bool:
    """The facts equal what the fold of the tenant's whole stream holds."""
    store = EventStore(_env(url))
    state = store.state(tenant)
    with connect(url) as conn:
        msgs = {(r[0], r[1]): r[2:] for r in conn.execute(
            f"SELECT mailbox, id, thread, rfc_id, deleted, read, labels FROM {S}.message "
            "WHERE tenant = %s", (tenant,))}
        rfcs = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
            f"SELECT mailbox, rfc, thread, present FROM {S}.rfc WHERE tenant = %s", (tenant,))}
        threads = {r[0]: r[1:] for r in conn.execute(
            f"SELECT id, mailbox, created_seq, crm FROM {S}.thread WHERE tenant = %s", (tenant,))}
        counters = {r[0]: r[1:3] for r in conn.execute(COUNTERS, (tenant,))}
        counted = {r[0]: r[1:3] for r in conn.execute(COUNTED, (tenant,))}
    wrong: list[object] = [k for k in state.messages if msgs.get(k) != (
        (m := state.messages[k]).thread, m.rfc_id, m.deleted, m.read,
        orjson.dumps(list(m.labels)).decode())]
    wrong += [k for k in msgs if k not in state.messages]
    wrong += [k for k, (t, present) in rfcs.items() if (state.rfc_index.get(k) if present
                                                         else state.missing_parents.get(k)) != t]
    wrong += [k for k in state.missing_parents if rfcs.get(k, ("", True))[1]]
    wrong += [(k[0], m.rfc_id) for k, m in state.messages.items()
              if m.rfc_id and not rfcs.get((k[0], m.rfc_id), ("", False))[1]]
    wrong += [t for t in state.threads if threads.get(t) != (
        (x := state.threads[t]).mailbox, x.created_seq, x.crm_initiated)]
    wrong += [t for t in threads if t not in state.threads]
    wrong += [b for b, m in state.mailboxes.items() if not counters.get(b, (0, 0)) == counted.get(
        b, (0, 0)) == (m.stored, m.synced)]
    light = light_state(store, tenant)[0]  # the rest of the state, folded without messages
    wrong += [f.name for f in fields(TenantState) if f.name not in MAIL_PARTS
              and getattr(light, f.name) != getattr(state, f.name)]
    print(f"check {tenant}: {len(msgs):,} messages, {len(rfcs):,} Message-IDs, {len(threads):,} "
          f"threads, the state without messages: "
          f"{'EQUAL to the fold' if not wrong else f'{len(wrong)} DIFFER: {wrong[:5]}'}")
    store.close()
    return not wrong


def _env(url: str, **extra: str) -> dict[str, str]:
    from runners.bootstrap.config_postgres import postgres_env

    return {**postgres_env(url), **extra}


# -- start ----------------------------------------------------------------------------------------
def light_state(store: EventStore, tenant: str) -> tuple[TenantState, dict[str, float]]:
    """The command-side state without messages: every event but MessageSynced/EmailSent folded,
    the counters those kept read from the facts, seq and time from the stream's last event."""
    recorder = store.app.recorder
    assert isinstance(recorder, BoundedPostgresRecorder)
    table = f"{recorder.datastore.schema or 'public'}.{recorder.events_table_name}"
    topics = [get_topic(k) for k in ev.EVENT_TYPES if k not in SKIPPED]
    state, stream, phases = TenantState(tenant), stream_id(tenant), {}
    started = time.perf_counter()
    after, read = 0, 0.0
    with recorder.datastore.get_connection() as conn, \
            conn.cursor(binary=True, row_factory=tuple_row) as cur:
        while True:
            t = time.perf_counter()
            rows = cur.execute(f"SELECT originator_version, topic, state FROM {table} WHERE "
                               "originator_id = %s AND originator_version > %s AND topic = "
                               "ANY(%s) ORDER BY originator_version LIMIT 5000",
                               (stream, after, topics), prepare=True).fetchall()
            read += time.perf_counter() - t
            for seq, topic, body in rows:
                evolve(state, store.mapper.to_fold(stream, seq, topic, body), seq)  # type: ignore[arg-type]
            if len(rows) < 5000:
                break
            after = rows[-1][0]
        phases["read"], phases["read+fold"] = read, time.perf_counter() - started
        t = time.perf_counter()
        counters = cur.execute(COUNTERS, (tenant,)).fetchall()
        last_synced = [r[3] for r in counters if r[3] is not None]
        at: dict[int, bytes] = dict(cur.execute(
            f"SELECT originator_version, state FROM {table} WHERE originator_id = %s AND "
            "originator_version = ANY(%s)", (stream, last_synced)).fetchall())
        for mailbox, stored, synced, seq in counters:
            mbx = state.mailboxes[mailbox]
            mbx.stored, mbx.synced = stored, synced
            if seq is not None:
                mbx.last_sync_at = datetime.fromisoformat(orjson.loads(at[seq])["occurred_at"])
        last = cur.execute(f"SELECT originator_version, state FROM {table} WHERE originator_id "
                           "= %s ORDER BY originator_version DESC LIMIT 1", (stream,)).fetchone()
        phases["counters"] = time.perf_counter() - t
        t = time.perf_counter()
        cur.execute(COUNTED, (tenant,)).fetchall()  # the alternative to the counters table
        phases["(aggregate instead)"] = time.perf_counter() - t
    if last is not None:
        state.seq, state.last_at = last[0], datetime.fromisoformat(
            orjson.loads(last[1])["occurred_at"])
    return state, phases


LIGHT_START = (
    "import sys, time\nfrom datetime import UTC, datetime\n"
    "from domain.commands import parse_command\nfrom runners.bootstrap.config import open_engine\n"
    "from benchmarks.mail_facts_cost import light_state\n"
    "started, cpu = time.perf_counter(), time.process_time()\n"
    "engine = open_engine('unused.db', sys.argv[1])\n"
    "store = engine.stores().events\n"
    "state, phases = light_state(store, sys.argv[2])\n"
    "store._states[sys.argv[2]] = state  # what EventStore.state caches\n"
    "command = parse_command({'cmd': 'ConfigureTenant', 'tenant': sys.argv[2],\n"
    "                         'mass_delete_threshold': 0.5})\n"
    "engine.execute(command, now=datetime.now(UTC), correlation_id='bench:first-command')\n"
    "print('SECONDS', time.perf_counter() - started, flush=True)\n"
    "print('CPU', time.process_time() - cpu, flush=True)\n"
    "print('PHASES', ' '.join(f'{k}={v:.2f}s' for k, v in phases.items()))\n")


def start(url: str, current: str | None, tenant: str, rounds: int) -> None:
    from benchmarks.memory_per_message import _PEAK, FIRST_COMMAND

    env = {**os.environ, "CRMSYNC_SNAPSHOTS": "off",
           "CRMSYNC_CONTENT_KEY": os.environ.get("CRMSYNC_CONTENT_KEY", KEY)}
    runs = [("facts design", _PEAK + LIGHT_START, url)]
    if current:
        runs.insert(0, ("today, no snapshot", FIRST_COMMAND, current))
    for r in range(rounds):
        for label, program, where in (runs if r % 2 == 0 else runs[::-1]):
            done = subprocess.run([sys.executable, "-c", program, where, tenant], check=True,
                                  env=env, capture_output=True, text=True)
            out = dict(line.split(maxsplit=1) for line in done.stdout.strip().splitlines())
            print(f"round {r + 1} first command, {label:>18}: {float(out['SECONDS']):6.2f} s, "
                  f"CPU {float(out['CPU']):6.2f} s, peak {int(out['PEAK']) / 1024:.0f} MB  "
                  f"{out.get('PHASES', '')}  load {os.getloadavg()[0]:.1f}", flush=True)


# -- ingest ---------------------------------------------------------------------------------------
class FactsRecorder(BoundedPostgresRecorder):
    """Writes `pending` facts rows in the transaction that inserts the events (the library's
    hook for what must commit with them: a failed append writes no facts)."""

    pending: list[tuple[Any, ...]] | None = None

    def _insert_events(self, curs: psycopg.Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        for sql, params in zip(WRITE, self.pending or (), strict=False):
            curs.execute(sql, params, prepare=True)


Synced = tuple[int, str, str, bool, str, str | None, str | None, Sequence[str], bool,
               Sequence[str]]  # seq, mailbox, thread, crm, id, rfc, in_reply_to, refs, read, labels


def facts_rows(tenant: str, first_seq: int, events: Sequence[ev.DomainEvent]
               ) -> list[tuple[Any, ...]]:
    """The facts rows of a batch's MessageSynced (the writer's side)."""
    return rows_of(tenant, [
        (seq, e.mailbox, e.thread, e.crm_initiated, e.message.id, e.message.message_id,
         e.message.in_reply_to, e.message.references or (), e.message.read, e.message.labels)
        for seq, e in enumerate(events, first_seq) if isinstance(e, ev.MessageSynced)])


def rows_of(tenant: str, synced: Sequence[Synced]) -> list[tuple[Any, ...]]:
    """The facts rows of synced messages, netted within the batch (a Message-ID first
    referenced, then synced in the same batch, is present); the database keeps what it had."""
    msgs: list[tuple[Any, ...]] = []
    threads: dict[str, tuple[str, str, int, bool]] = {}
    rfcs: dict[tuple[str, str], tuple[str, str, str, bool]] = {}
    counts: dict[str, tuple[str, int, int, int]] = {}  # live, synced, last synced seq
    for seq, mailbox, thread, crm, mid, rfc, reply_to, refs, read, labels in synced:
        msgs.append((mailbox, mid, thread, rfc, seq, False, False, read,
                     orjson.dumps(labels).decode()))
        threads.setdefault(thread, (thread, mailbox, seq, crm))
        n = counts.get(mailbox, (mailbox, 0, 0, 0))
        counts[mailbox] = (mailbox, n[1] + 1, n[2] + 1, seq)
        if rfc and not rfcs.get((mailbox, rfc), ("", "", "", False))[3]:
            rfcs[(mailbox, rfc)] = (mailbox, rfc, thread, True)
        for ref in (reply_to, *refs):
            if ref and ref != rfc:
                rfcs.setdefault((mailbox, ref), (mailbox, ref, thread, False))
    return [(tenant, *map(list, zip(*msgs, strict=True))),
            (tenant, *map(list, zip(*threads.values(), strict=True))),
            (tenant, *map(list, zip(*rfcs.values(), strict=True))),
            (tenant, *map(list, zip(*counts.values(), strict=True)))]


def backfill(url: str, tenant: str) -> None:
    """The facts of one tenant through the writer's code: its stream read and decoded as the
    fold reads it (synced messages without the event model), rows written page by page."""
    store = EventStore(_env(url))
    stream, to_fold = stream_id(tenant), store.mapper.to_fold
    with connect(url) as conn:
        conn.execute(DDL)
        for table in ("message", "rfc", "thread", "mailbox"):
            conn.execute(f"DELETE FROM {S}.{table} WHERE tenant = %s", (tenant,))
        before, wall, cpu = backends_cpu(conn), time.perf_counter(), time.process_time()
        for page in store._rows(tenant, 0, 5000):
            synced = [(seq, m.mailbox, m.thread, m.crm_initiated, m.id, m.rfc_id, m.in_reply_to,
                       m.references, m.read, m.labels) for seq, topic, body in page
                      if topic == SYNCED and type(m := to_fold(stream, seq, topic, body))
                      is SyncedMessage]
            if synced:
                with conn.transaction(), conn.cursor() as cur:
                    for sql, params in zip(WRITE, rows_of(tenant, synced), strict=True):
                        cur.execute(sql, params, prepare=True)
        print(f"backfill {tenant} through the writer's code: {time.perf_counter() - wall:.1f} s, "
              f"CPU {time.process_time() - cpu:.1f} s, server CPU {cpu_since(conn, before):.1f} s")
    store.close()


def with_references(events: Iterator[ev.DomainEvent]) -> Iterator[ev.DomainEvent]:
    """`benchmarks.generate`'s messages (4 per thread) replying to the earlier ones of their
    thread, and all naming a parent that is never synced (S13's missing parents)."""
    for e in events:
        if not isinstance(e, ev.MessageSynced):
            yield e
        else:
            n = int(e.message.id[1:])
            earlier = [f"<m{n - n % 4 + i}@ext.test>" for i in range(n % 4)]
            yield e.model_copy(update={"message": e.message.model_copy(update={
                "in_reply_to": earlier[-1] if earlier else None,
                "references": [f"<lost-{n // 4}@ext.test>", *earlier]})})


def ingest(url: str, pairs: int, messages: int, batch: int) -> list[str]:
    from benchmarks.generate import history

    store = EventStore(_env(url, APPLICATION_RECORDER_TOPIC=get_topic(FactsRecorder)))
    recorder = store.app.recorder
    assert isinstance(recorder, FactsRecorder)
    run, written = uuid.uuid4().hex[:6], []
    figures: dict[str, list[float]] = {"plain": [], "facts": []}
    with connect(url) as conn:
        conn.execute(DDL)
        for p in range(pairs):
            for mode in ("plain", "facts") if p % 2 == 0 else ("facts", "plain"):
                tenant = f"ingest-{run}-{p}-{mode}"
                events = list(with_references(history(tenant, 20, 100, messages, 0, seed=p)))
                mail = [e for e in events if isinstance(e, ev.MessageSynced)]
                store.append_raw(tenant, 0, [e for e in events
                                             if not isinstance(e, ev.MessageSynced)])
                seq = len(events) - len(mail)
                before, wall, cpu = backends_cpu(conn), time.perf_counter(), time.process_time()
                for i in range(0, len(mail), batch):
                    chunk = mail[i:i + batch]
                    recorder.pending = facts_rows(tenant, seq + 1, chunk) \
                        if mode == "facts" else None
                    store.append_raw(tenant, seq, chunk)
                    seq += len(chunk)
                recorder.pending = None
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                server = cpu_since(conn, before)
                figures[mode].append(len(mail) / wall)
                written.append(tenant)
                print(f"pair {p + 1} {mode:>5}: {len(mail) / wall:7.0f} events/s, writer CPU "
                      f"{cpu / len(mail) * 1e6:5.0f} us/event, server CPU "
                      f"{server / len(mail) * 1e6:5.0f} us/event, load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"median events/s: plain {statistics.median(figures['plain']):.0f}, facts "
          f"{statistics.median(figures['facts']):.0f}")
    store.close()
    return [t for t in written if t.endswith("facts")]


# -- prefetch -------------------------------------------------------------------------------------
Batch = tuple[str, list[ev.MailMessage]]


def sample_batches(conn: psycopg.Connection[Any], tenant: str, count: int, size: int
                   ) -> list[Batch]:
    """SyncMessage batches of one mailbox each: half re-delivered known messages (S14), half new
    replies to known ones naming a parent never synced; half with a provider thread id."""
    mailboxes = [r[0] for r in conn.execute(
        f"SELECT DISTINCT mailbox FROM {S}.thread WHERE tenant = %s ORDER BY 1", (tenant,))]
    out: list[Batch] = []
    at = datetime(2030, 1, 1, tzinfo=UTC)
    for k in range(count):
        mailbox = mailboxes[k * 7 % len(mailboxes)]
        known = conn.execute(f"SELECT id, rfc_id, thread FROM {S}.message WHERE tenant = %s "
                             "AND mailbox = %s ORDER BY random() LIMIT %s",
                             (tenant, mailbox, size)).fetchall()
        msgs = []
        for i, (mid, rfc, thread) in enumerate(known):
            given = thread.removeprefix(f"{mailbox}:") if i % 4 < 2 else None
            if i % 2 == 0:  # re-delivered
                msgs.append(ev.MailMessage(id=mid, message_id=rfc, thread_id=given,
                                           from_="a@ext.test", to=["b@corp.test"], subject="s",
                                           sent_at=at, labels=["INBOX"]))
                continue
            other = known[i - 1][1]
            msgs.append(ev.MailMessage(
                id=f"new-{k}-{i}", message_id=f"<new-{k}-{i}@bench.test>", thread_id=given,
                in_reply_to=rfc, references=[f"<lost-{k}-{i}@bench.test>", other, rfc],
                from_="a@ext.test", to=["b@corp.test"], subject="Re: s", sent_at=at,
                labels=["INBOX"]))
        out.append((mailbox, msgs))
    return out


def fetch(conn: psycopg.Connection[Any], tenant: str, batch: Batch) -> tuple[dict[str, Any], ...]:
    """What `decide` would read for the batch, as three dicts: one round trip."""
    mailbox, msgs = batch
    ids = [m.id for m in msgs]
    rfcs = list({r for m in msgs for r in (m.message_id, m.in_reply_to, *(m.references or ()))
                 if r})
    given = [f"{mailbox}:{m.thread_id}" for m in msgs if m.thread_id]
    with conn.pipeline(), conn.cursor() as a, conn.cursor() as b, conn.cursor() as t:
        a.execute(PREFETCH[0], (tenant, mailbox, ids), prepare=True)
        b.execute(PREFETCH[1], (tenant, mailbox, rfcs), prepare=True)
        t.execute(PREFETCH[2], (tenant, given, tenant, mailbox, rfcs), prepare=True)
        return ({r[0]: r[1:] for r in a.fetchall()}, {r[0]: r[1:] for r in b.fetchall()},
                {r[0]: r[1:] for r in t.fetchall()})


def prefetch(url: str, tenant: str, count: int, size: int, decide_too: bool) -> None:
    with connect(url) as conn:
        batches = sample_batches(conn, tenant, count, size)
        fetch(conn, tenant, batches[0])  # prepared, cached
        walls, cpus, found, gots = [], [], [0, 0, 0], []
        before = backends_cpu(conn)
        for batch in batches:
            wall, cpu = time.perf_counter(), time.process_time()
            gots.append(got := fetch(conn, tenant, batch))
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            found = [n + len(g) for n, g in zip(found, got, strict=True)]
        server = cpu_since(conn, before) / count
        walls.sort()
        client = statistics.mean(cpus)
        print(f"prefetch of a batch of {size} (one round trip, 3 statements): p50 "
              f"{walls[len(walls) // 2] * 1e3:.1f} ms, p99 "
              f"{walls[int(len(walls) * .99)] * 1e3:.1f} ms; client CPU {client * 1e3:.1f} ms, "
              f"server CPU {server * 1e3:.1f} ms per batch = "
              f"{(client + server) / size * 1e6:.0f} us per message; rows per batch "
              f"{[round(n / count) for n in found]} "
              f"(messages, Message-IDs, threads); load {os.getloadavg()[0]:.1f}")
        mailbox, msgs = batches[0]
        wall = time.perf_counter()
        for m in msgs:  # what a port asked key by key would pay: a round trip per lookup
            conn.execute(PREFETCH[0], (tenant, mailbox, [m.id]), prepare=True).fetchall()
        print(f"one id per round trip instead: {(time.perf_counter() - wall) / len(msgs) * 1e6:.0f}"
              " us per lookup")
    if decide_too:
        today(url, tenant, batches, gots)


def with_facts(light: TenantState, mailbox: str, got: tuple[dict[str, Any], ...]
               ) -> TenantState:
    """The state without messages plus one batch's prefetched facts, in the tables the rules
    read today, so `decide` runs unchanged: a Message-ID's first message is a placeholder row
    whose id no provider id can equal (ids hold no control character, domain.input_rules)."""
    state = replace(light, messages=MessageTable(), missing_parents={})
    found, rfcs, threads = got
    for tid, (box, created, crm) in threads.items():
        state.threads.create(tid, box, created, crm)
    for mid, (thread, deleted, read, labels) in found.items():
        state.messages.put(mailbox, mid, thread, None, (), "", "", tuple(orjson.loads(labels)),
                           read, None)
        if deleted:
            state.messages[(mailbox, mid)] = replace(state.messages[(mailbox, mid)], deleted=True)
    for rfc, (thread, present) in rfcs.items():
        if present:
            state.messages.put(mailbox, "\0" + rfc, thread, rfc, (), "", "", (), False, None)
            state.messages.index_rfc(mailbox, rfc, "\0" + rfc)
        else:
            state.missing_parents[(mailbox, rfc)] = thread
    return state


def today(url: str, tenant: str, batches: list[Batch], gots: list[tuple[dict[str, Any], ...]]
          ) -> None:
    """Today's decide + fold of the same batches on the whole folded state (what the sync
    workers' `execute_batch` does per command), then on the state without messages plus each
    batch's prefetched facts: the time, and whether every decision is the same."""
    from domain.decide import decide

    store = EventStore(_env(url))
    wall, cpu = time.perf_counter(), time.process_time()
    state = store.state(tenant)
    print(f"today: the whole state folded in {time.perf_counter() - wall:.1f} s (CPU "
          f"{time.process_time() - cpu:.1f} s), {len(state.messages):,} messages")
    decided = folded = 0.0
    n = 0
    now = datetime.now(UTC)
    expected: list[list[dict[str, Any]]] = []
    for mailbox, msgs in batches:
        cmds = [c.SyncMessage(cmd="SyncMessage", tenant=tenant, actor="system:sync",
                              mailbox=mailbox, message=m) for m in msgs]
        for cmd in cmds:
            t = time.process_time()
            events = decide(state, cmd, now=now, correlation_id="bench")
            decided += time.process_time() - t
            t = time.process_time()
            for e in events:
                evolve(state, e, state.seq + 1)
            folded += time.process_time() - t
            n += 1
            expected.append([e.model_dump() for e in events])
    print(f"today: decide {decided / n * 1e6:.0f} us + fold {folded / n * 1e6:.0f} us CPU per "
          f"message (same batches, {n:,} commands)")
    light, _ = light_state(store, tenant)
    made = decided = folded = 0.0
    same, i = 0, 0
    for (mailbox, msgs), got in zip(batches, gots, strict=True):
        t = time.process_time()
        part = with_facts(light, mailbox, got)
        made += time.process_time() - t
        for m in msgs:
            t = time.process_time()
            events = decide(part, c.SyncMessage(cmd="SyncMessage", tenant=tenant,
                                                actor="system:sync", mailbox=mailbox, message=m),
                            now=now, correlation_id="bench")
            decided += time.process_time() - t
            t = time.process_time()
            for e in events:
                evolve(part, e, part.seq + 1)
            folded += time.process_time() - t
            same += [e.model_dump() for e in events] == expected[i]
            i += 1
    print(f"facts design: the batch's facts into a state without messages {made / n * 1e6:.0f} "
          f"us + decide {decided / n * 1e6:.0f} us + fold {folded / n * 1e6:.0f} us CPU per "
          f"message; decisions equal to today's: {same:,} of {n:,}")
    store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=("build", "backfill", "check", "start", "ingest", "prefetch",
                                    "drop"))
    p.add_argument("--postgres", required=True, help="a copy of the history (written to)")
    p.add_argument("--current", help="start: another copy, for today's first command")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--tenants", nargs="*", help="check: these tenants (default --tenant)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--messages", type=int, default=10_000, help="ingest: per tenant")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--batches", type=int, default=300, help="prefetch: how many")
    p.add_argument("--decide", action="store_true", help="prefetch: also today's decide+fold")
    args = p.parse_args()
    os.environ.setdefault("CRMSYNC_CONTENT_KEY", KEY)
    if args.part == "build":
        build(args.postgres)
    elif args.part == "backfill":
        backfill(args.postgres, args.tenant)
    elif args.part == "check":
        ok = [check(args.postgres, t) for t in args.tenants or [args.tenant]]
        sys.exit(0 if all(ok) else 1)
    elif args.part == "start":
        start(args.postgres, args.current, args.tenant, args.rounds)
    elif args.part == "ingest":
        written = ingest(args.postgres, args.pairs, args.messages, args.batch)
        sys.exit(0 if all(check(args.postgres, t) for t in written[:1]) else 1)
    elif args.part == "prefetch":
        prefetch(args.postgres, args.tenant, args.batches, args.batch, args.decide)
    else:
        with connect(args.postgres) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")


if __name__ == "__main__":
    main()
