"""Which stores an engine runs on: PostgreSQL when a URL is given, else the embedded SQLite file.

The PostgreSQL URL comes from `--postgres`, else `$CRMSYNC_POSTGRES_URL`. Events (eventsourcing's
recorder) and views (PostgresViews) land in the same schema: the `search_path` of the URL's
`options=-csearch_path=X`, else the schema the server picks for the connection.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict

from adapters.credentials.store_postgres import PostgresCredentialStore
from adapters.errors import StoreError
from adapters.eventstore.snapshots import (
    PostgresSnapshotRows,
    SnapshotRows,
    Snapshots,
    SqliteSnapshotRows,
)
from adapters.eventstore.store import EventStore
from adapters.eventstore.waiter_postgres import PollingWaiter, PostgresWaiter
from adapters.views.postgres import PostgresViews, startup_lock
from runners.bootstrap.settings import load_settings
from runners.services.credentials import erase_removed
from runners.services.engine import Engine, Progress
from runners.services.rebuild import rebuild_in_parts

_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*((?:\\.|[^\s\\])+)")


def search_path_schema(options: str) -> str | None:
    """The first schema of a `-c search_path=...` in libpq `options`, if any."""
    match = _SEARCH_PATH.search(options)
    if match is None:
        return None
    value = re.sub(r"\\(.)", r"\1", match.group(1))
    for entry in value.split(","):
        name = entry.strip()
        if name.startswith('"') and name.endswith('"') and len(name) > 1:
            name = name[1:-1]
        if name and name != "$user":
            return name
    return None


def postgres_env(url: str, schema: str | None = None) -> dict[str, str]:
    """eventsourcing's settings for a PostgreSQL URL (libpq URL or key=value conninfo).

    libpq defaults apply to what the URL leaves out (PGHOST, PGPORT, PGUSER, PGPASSWORD, the
    OS user). `schema` is used when the URL's options name none.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error as exc:
        raise StoreError(f"not a PostgreSQL URL: {exc}") from exc
    user = params.get("user") or os.environ.get("PGUSER") or getpass.getuser()
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": params.get("dbname") or os.environ.get("PGDATABASE") or user,
        "POSTGRES_HOST": params.get("host") or os.environ.get("PGHOST") or "localhost",
        "POSTGRES_PORT": params.get("port") or os.environ.get("PGPORT") or "5432",
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": params.get("password") or os.environ.get("PGPASSWORD") or "",
    }
    if "connect_timeout" in params:
        env["POSTGRES_CONNECT_TIMEOUT"] = params["connect_timeout"]
    chosen = search_path_schema(params.get("options", "")) or schema
    if chosen:
        env["POSTGRES_SCHEMA"] = chosen
    return env


def open_postgres(url: str) -> Engine:
    with startup_lock(url):  # processes starting together create the tables one at a time
        views = PostgresViews(url)  # creates the schema and view tables on first start
        try:
            store = EventStore(postgres_env(url, schema=views.schema))
            credentials = PostgresCredentialStore(url, load_settings().secret("CREDENTIALS_KEY"))
        except BaseException:
            views.close()
            raise
    engine = Engine(store, views, scratch=lambda suffix: PostgresViews(url, suffix=suffix),
                    credentials=credentials)
    store_env = postgres_env(url, schema=views.schema)

    def in_parts(names: list[str], parts: int, progress: Progress | None) -> None:
        rebuild_in_parts(engine, url, store_env, names, parts, progress)

    engine.rebuild_in_parts = in_parts
    return engine


def snapshot_key(env: Mapping[str, str] | None = None) -> bytes | None:
    """The key that signs tenant snapshots: $CRMSYNC_SNAPSHOT_KEY, else $CRMSYNC_SECRET (the
    token secret); None (no snapshots) without one or with $CRMSYNC_SNAPSHOTS=off."""
    settings = load_settings(env)
    if settings.SNAPSHOTS.lower() in ("off", "0", "false", "no"):
        return None
    text = settings.secret("SNAPSHOT_KEY") or settings.secret("SECRET")
    return text.encode() if text and len(text.encode()) >= 16 else None


def attach_snapshots(engine: Engine, url: str | None, db: str) -> None:
    """Tenant snapshots beside the events (adapters.eventstore.snapshots), when a key is
    configured."""
    key = snapshot_key()
    if key is None:
        return
    rows: SnapshotRows
    if url:
        with startup_lock(url):
            rows = PostgresSnapshotRows(url)
    else:
        rows = SqliteSnapshotRows(db)
    engine.store.snapshots = Snapshots(rows, key, every=load_settings().SNAPSHOT_EVERY)


def open_engine(db: str, postgres: str | None = None) -> Engine:
    """PostgreSQL at `postgres`, else at $CRMSYNC_POSTGRES_URL, else the SQLite file `db`."""
    url = postgres_url(postgres)
    engine = open_postgres(url) if url else Engine.open_sqlite(db)
    try:
        attach_snapshots(engine, url, db)
        erase_removed(engine)  # finish erasures a crash interrupted (credentials follow the log)
    except BaseException:
        engine.close()
        raise
    return engine


def postgres_url(postgres: str | None = None) -> str | None:
    """The PostgreSQL URL in effect: the flag, else $CRMSYNC_POSTGRES_URL, else None."""
    return postgres or load_settings().secret("POSTGRES_URL")


def open_waiter(engine: Engine, postgres: str | None = None) -> PollingWaiter | PostgresWaiter:
    """How a runner waits for new events: LISTEN/NOTIFY on PostgreSQL, else polling."""
    url = postgres_url(postgres)
    channel = getattr(engine.store.app.recorder, "channel_name", None)
    if url and isinstance(channel, str):
        return PostgresWaiter(url, channel)
    return PollingWaiter()
