"""The PostgreSQL side of runners.bootstrap.config: eventsourcing's settings for a URL and an
engine whose events, views, credentials and snapshots live in the URL's schema. Imported only
when a PostgreSQL URL is configured, so the embedded engine never loads psycopg."""

from __future__ import annotations

import getpass
import os
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from adapters.credentials.store_postgres import PostgresCredentialStore
from adapters.errors import StoreError
from adapters.eventstore.snapshots_postgres import PostgresSnapshotRows
from adapters.eventstore.store import CONTENT_KEY, EventStore
from adapters.eventstore.waiter_postgres import PostgresWaiter
from adapters.views.postgres import PostgresViews, startup_lock
from runners.bootstrap.settings import Settings, load_settings, switched
from runners.services.engine import Engine
from runners.services.rebuild import Progress, rebuild_in_parts

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


def postgres_env(url: str, schema: str | None = None,
                 settings: Settings | None = None) -> dict[str, str]:
    """eventsourcing's settings for a PostgreSQL URL (libpq URL or key=value conninfo), with
    the content master key of `settings` (default: the environment's, read now).

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
    content_key = (settings or load_settings()).secret("CONTENT_KEY")
    if content_key:  # the store's own setting: it follows the env into rebuild part processes
        env[CONTENT_KEY] = content_key
    return env


def open_postgres(url: str, settings: Settings | None = None) -> Engine:
    """The engine whose stores live in `url`'s schema, keyed by `settings` (default: the
    environment's, read now)."""
    settings = settings or load_settings()
    content_key = settings.secret("CONTENT_KEY")
    with startup_lock(url):  # processes starting together create the tables one at a time
        # creates the schema and view tables on first start
        views = PostgresViews(url, content_key=content_key)
        try:
            store = EventStore(postgres_env(url, schema=views.schema, settings=settings))
            credentials = PostgresCredentialStore(url, settings.secret("CREDENTIALS_KEY"))
        except BaseException:
            views.close()
            raise

    def scratch(suffix: str) -> PostgresViews:
        return PostgresViews(url, suffix=suffix, content_key=content_key)

    engine = Engine(store, views, scratch=scratch, credentials=credentials)
    if switched(settings.LAZY_MAILBOXES, default=True):
        store.lazy_on()
    store_env = postgres_env(url, schema=views.schema, settings=settings)

    def in_parts(names: list[str], parts: int, progress: Progress | None) -> None:
        rebuild_in_parts(store, views, scratch, url, store_env, names, parts, progress)

    engine.rebuild_in_parts = in_parts
    return engine


def snapshot_rows(url: str) -> PostgresSnapshotRows:
    with startup_lock(url):
        return PostgresSnapshotRows(url)


def waiter(url: str, channel: str) -> PostgresWaiter:
    return PostgresWaiter(url, channel)


def location(url: str) -> tuple[str, str, str, str]:
    """(host, port, dbname, schema) of a URL (the shard map: two shards may not share one);
    ValueError when it is not a PostgreSQL URL."""
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error as exc:
        raise ValueError(str(exc)) from None
    return (params.get("host", ""), params.get("port", ""), params.get("dbname", ""),
            search_path_schema(params.get("options", "")) or "")
