"""`crmsync shard move --tenant T --to SHARD`: a tenant's stream to another shard (issue #15).

Steps, each refusing to go on when the one before did not hold:
1. copy the tenant's content keys and stored credentials (rows as stored: every shard shares
   the deployment's master keys), then its events AS STORED (same versions, same bytes: the E7
   chain and L2 sealing stay valid) into the target's event store;
2. project them into the target's views (they are new in the target's log);
3. verify: same event count, the target's chain verifies with the source's head link, and every
   view row of the tenant (key, row key, document) is the same in both shards;
4. check that the source's last event is still the one pinned at the start; else delete the
   copy and fail (a writer was not stopped);
5. flip the map (the file is rewritten atomically; with $CRMSYNC_SHARDS the new entry is printed
   for the operator to set);
6. delete from the source, if its stream still did not grow: the events, then every row with the
   tenant's id in the source's schema (views, keys, credentials, snapshots, stuck marks).

Writers: the move does not fence them. The operator stops the tenant's writers first (or the
whole shard's processes: they read the map at start), lets the outbox and contact runners drain,
moves, and restarts them; a write that slips in is caught at step 4 (nothing moved).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from adapters.errors import StoreError
from adapters.eventstore.store import stream_id
from projections.history import BASES, HISTORIES, canonical_versions
from projections.rows import PROJECTIONS
from runners.bootstrap.shards import ShardMap, ShardMapError, save
from runners.services.engine import Engine

PAGE = 2000
KEPT_TABLES = ("content_keys", "mailbox_credentials")  # copied as stored; views are rebuilt


@dataclass
class MoveReport:
    tenant: str
    source: str
    target: str
    events: int
    head: tuple[int, str] | None
    views: dict[str, int]  # projection -> rows of the tenant (same in both shards)
    deleted: bool
    note: str = ""


def _recorder(engine: Engine) -> Any:
    """The PostgreSQL recorder of the engine's log: a move copies stored events as they are."""
    return engine.stores().events.app.recorder


def _schema(engine: Engine) -> str:
    """The schema of the engine's PostgreSQL views (and events)."""
    return str(engine.stores().views.schema)  # type: ignore[attr-defined]


def _events_table(engine: Engine) -> str:
    return str(_recorder(engine).events_table_name)


def _conn(url: str, schema: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def _stored(engine: Engine, tenant: str) -> Iterator[list[Any]]:
    recorder = _recorder(engine)
    after = 0
    while True:
        page = list(recorder.select_events(stream_id(tenant), gt=after, limit=PAGE))
        if not page:
            return
        yield page
        after = page[-1].originator_version


def view_digest(engine: Engine, url: str, tenant: str) -> dict[str, tuple[int, str]]:
    """projection -> (rows, SHA-256 over the tenant's rows in key order): what must match. A
    history is compared by its canonical versions: the versions a writer may or may not leave
    when a key was touched without a change do not count (projections.history)."""
    schema = _schema(engine)
    out: dict[str, tuple[int, str]] = {}
    with _conn(url, schema) as conn:
        for name in sorted((*PROJECTIONS, *HISTORIES.values())):  # histories move too (E4)
            digest, rows = hashlib.sha256(), 0
            cur = conn.execute(sql.SQL("SELECT key, row_key, doc FROM {} WHERE tenant = %s "
                                       "ORDER BY key, row_key").format(
                                           sql.Identifier(f"view_{name}")), (tenant,))
            found: Iterable[tuple[str, str, str, bytes]] = (
                (tenant, key, row_key, bytes(doc)) for key, row_key, doc in cur)
            if name in BASES:
                found = canonical_versions(found)
            for _, key, row_key, doc in found:
                digest.update(f"{len(key)}:{key}{len(row_key)}:{row_key}".encode())
                digest.update(len(doc).to_bytes(8, "big") + doc)
                rows += 1
            out[name] = (rows, digest.hexdigest())
    return out


def _tenant_tables(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> list[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = "
                        "%s AND column_name = 'tenant' ORDER BY table_name", (schema,)).fetchall()
    return [str(r[0]) for r in rows]


def _copy_rows(source: psycopg.Connection[tuple[Any, ...]],
               target: psycopg.Connection[tuple[Any, ...]], table: str, tenant: str) -> int:
    cur = source.execute(sql.SQL("SELECT * FROM {} WHERE tenant = %s").format(
        sql.Identifier(table)), (tenant,))
    rows = cur.fetchall()
    if rows:
        holes = sql.SQL(", ").join(sql.Placeholder() * len(rows[0]))
        with target.cursor() as tcur:
            tcur.executemany(sql.SQL("INSERT INTO {} VALUES ({}) ON CONFLICT DO NOTHING").format(
                sql.Identifier(table), holes), rows)
    return len(rows)


def move_tenant(shard_map: ShardMap, tenant: str, to: str,
                open_url: Callable[[str], Engine], *, say: Callable[[str], None] = print
                ) -> MoveReport:
    """Move `tenant` to shard `to` (steps in the module docstring). StoreError when a step
    does not hold; nothing is deleted from the source then."""
    src_name, src_url, dst_url = shard_map.shard_of(tenant), shard_map.url_of(tenant), \
        shard_map.url(to)
    if src_name == to:
        raise ShardMapError(f"tenant {tenant!r} is on shard {to!r} already")
    source, target = open_url(src_url), open_url(dst_url)
    try:
        if _recorder(target).select_events(stream_id(tenant), limit=1):
            raise StoreError(f"shard {to!r} holds events of {tenant!r} already (an earlier "
                             "move? `crmsync shard move --abort` deletes that copy)")
        before, pinned = source.verify_log(tenant), _head(source, tenant)
        if pinned is None:
            raise StoreError(f"shard {src_name!r} holds no events of {tenant!r}")
        if before.failure is not None:
            raise StoreError(f"the source chain of {tenant!r} fails at {before.failure}")
        src_schema = _schema(source)
        dst_schema = _schema(target)
        with _conn(src_url, src_schema) as sconn, _conn(dst_url, dst_schema) as tconn:
            for table in KEPT_TABLES:
                say(f"copied {_copy_rows(sconn, tconn, table, tenant)} rows of {table}")
        copied = 0
        for page in _stored(source, tenant):
            _recorder(target).insert_events(page)
            copied += len(page)
        say(f"copied {copied} events")
        target.catch_up()
        after = target.verify_log(tenant)
        head = before.heads.get(tenant)
        if after.failure is not None or after.events != before.events or \
                after.heads.get(tenant) != head:
            raise StoreError(f"verify failed: source {before.events} events head {head}, "
                             f"target {after.events} events head {after.heads.get(tenant)} "
                             f"{after.failure or ''}")
        source.catch_up()
        theirs, ours = view_digest(source, src_url, tenant), view_digest(target, dst_url, tenant)
        if theirs != ours:
            differ = sorted(n for n in theirs if theirs[n] != ours.get(n))
            raise StoreError(f"views of {tenant!r} differ after the copy: {differ}")
        say(f"verified: {after.events} events, chain head {head}, views identical")
        if _head(source, tenant) != pinned:  # a writer was not stopped: the copy is behind
            _delete(target, dst_url, tenant)
            raise StoreError(f"the stream of {tenant!r} grew on shard {src_name!r} during the "
                             "move (stop its writers first): nothing moved, the copy deleted")
        moved = shard_map.moved(tenant, to)
        note = ""
        if shard_map.path is not None:
            save(moved)
            say(f"map {shard_map.path}: {tenant} -> {to}")
        else:
            note = f"set {tenant}:{to} in $CRMSYNC_SHARDS"
            say(note)
        if _head(source, tenant) != pinned:  # in the instant between the check and the flip
            return MoveReport(tenant, src_name, to, copied, head,
                              {n: v[0] for n, v in ours.items()}, False,
                              "the source stream grew after the flip: nothing deleted there; "
                              "copy its last events by hand or move back")
        _delete(source, src_url, tenant)
        say(f"deleted {tenant} from shard {src_name}")
        return MoveReport(tenant, src_name, to, copied, head,
                          {n: v[0] for n, v in ours.items()}, True, note)
    finally:
        source.close()
        target.close()


def _head(engine: Engine, tenant: str) -> tuple[int, str] | None:
    """(version, stored bytes' hash) of the stream's last event, read from the store now."""
    last = _recorder(engine).select_events(stream_id(tenant), desc=True, limit=1)
    if not last:
        return None
    return last[0].originator_version, hashlib.sha256(last[0].state).hexdigest()


def _delete(engine: Engine, url: str, tenant: str) -> None:
    """The tenant's events and every row naming it, in one transaction."""
    schema = _schema(engine)
    with _conn(url, schema) as conn, conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE originator_id = %s").format(
            sql.Identifier(_events_table(engine))), (stream_id(tenant),))
        for table in _tenant_tables(conn, schema):
            conn.execute(sql.SQL("DELETE FROM {} WHERE tenant = %s").format(
                sql.Identifier(table)), (tenant,))
    engine.stores().events.forget(tenant)


def abort_copy(shard_map: ShardMap, tenant: str, to: str,
               open_url: Callable[[str], Engine]) -> None:
    """Delete the copy of a failed move from shard `to` (never the tenant's own shard)."""
    if shard_map.shard_of(tenant) == to:
        raise ShardMapError(f"{tenant!r} lives on {to!r}: that is not a copy")
    url = shard_map.url(to)
    target = open_url(url)
    try:
        _delete(target, url, tenant)
    finally:
        target.close()
