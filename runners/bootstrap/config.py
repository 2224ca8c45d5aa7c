"""Which stores an engine runs on: PostgreSQL when a URL is given, else the embedded SQLite file.

The PostgreSQL URL comes from `--postgres`, else `$CRMSYNC_POSTGRES_URL`. Each function takes
the process's `Settings` (built once by its entry point, issue #12); without one it builds them
from the environment (tests, benchmarks). Events (eventsourcing's
recorder) and views (PostgresViews) land in the same schema: the `search_path` of the URL's
`options=-csearch_path=X`, else the schema the server picks for the connection.

This module chooses; the PostgreSQL engine is built in config_postgres, imported only when a URL
is configured (a module imports at most one driver; the embedded engine loads no psycopg).
"""

from __future__ import annotations

from collections.abc import Mapping

from adapters.eventstore.snapshots import SnapshotRows, Snapshots
from runners.bootstrap.settings import Settings, load_settings, switched
from runners.services.credentials import erase_removed
from runners.services.engine import Engine
from runners.services.follower import PollingWaiter, Waiter


def snapshot_key(env: Settings | Mapping[str, str] | None = None) -> bytes | None:
    """The key that signs tenant snapshots: $CRMSYNC_SNAPSHOT_KEY, else $CRMSYNC_SECRET (the
    token secret); None (no snapshots) without one or with $CRMSYNC_SNAPSHOTS=off."""
    settings = env if isinstance(env, Settings) else load_settings(env)
    if not switched(settings.SNAPSHOTS, default=True):
        return None
    text = settings.secret("SNAPSHOT_KEY") or settings.secret("SECRET")
    return text.encode() if text and len(text.encode()) >= 16 else None


def attach_snapshots(engine: Engine, url: str | None, db: str, settings: Settings) -> None:
    """Tenant snapshots beside the events (adapters.eventstore.snapshots), when a key is
    configured."""
    key = snapshot_key(settings)
    if key is None:
        return
    rows: SnapshotRows
    if url:
        from runners.bootstrap.config_postgres import snapshot_rows

        rows = snapshot_rows(url)
    else:
        from adapters.eventstore.snapshots_sqlite import SqliteSnapshotRows

        rows = SqliteSnapshotRows(db)
    engine.stores().events.snapshots = Snapshots(rows, key,
                                                 every=settings.SNAPSHOT_EVERY)


def open_engine(db: str, postgres: str | None = None,
                settings: Settings | None = None) -> Engine:
    """PostgreSQL at `postgres`, else at $CRMSYNC_POSTGRES_URL, else the SQLite file `db`."""
    settings = settings or load_settings()
    url = postgres_url(postgres, settings)
    if url:
        from runners.bootstrap.config_postgres import open_postgres

        engine = open_postgres(url, settings)
    else:
        engine = Engine.open_sqlite(db, settings)
    try:
        attach_snapshots(engine, url, db, settings)
        erase_removed(engine)  # finish erasures a crash interrupted (credentials follow the log)
    except BaseException:
        engine.close()
        raise
    return engine


def postgres_url(postgres: str | None = None, settings: Settings | None = None) -> str | None:
    """The PostgreSQL URL in effect: the flag, else $CRMSYNC_POSTGRES_URL, else None."""
    return postgres or (settings or load_settings()).secret("POSTGRES_URL")


def open_waiter(engine: Engine, postgres: str | None = None,
                settings: Settings | None = None) -> Waiter:
    """How a runner waits for new events: LISTEN/NOTIFY on PostgreSQL, else polling."""
    url = postgres_url(postgres, settings)
    channel = getattr(engine.stores().events.app.recorder, "channel_name", None)
    if url and isinstance(channel, str):
        from runners.bootstrap.config_postgres import waiter

        return waiter(url, channel)
    return PollingWaiter()

