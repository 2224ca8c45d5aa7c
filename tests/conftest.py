"""Service fixtures: real PostgreSQL and NATS, never mocks.

They read CRMSYNC_POSTGRES_URL / CRMSYNC_NATS_URL (default: the local servers). A missing service
skips the test with the reason, except under CRMSYNC_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from services import missing

POSTGRES_URL = os.environ.get("CRMSYNC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("CRMSYNC_NATS_URL", "nats://127.0.0.1:4222")
# PostgreSQL stores seal mail content only with a master key (SPEC L2); a fixed test key, set
# here so that crmsync processes started by the tests inherit it too.
os.environ.setdefault("CRMSYNC_CONTENT_KEY", "dGVzdC1jb250ZW50LWtleS0zMi1ieXRlcy1sb25nISE=")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards; yields a URL that selects it."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        missing(f"PostgreSQL at {POSTGRES_URL}: {exc}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_env(postgres_url: str) -> dict[str, str]:
    """eventsourcing's settings for the same fresh schema, with the content master key."""
    url = urlparse(POSTGRES_URL)
    schema = postgres_url.rsplit("%3D", 1)[1]
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": url.path[1:],
           "POSTGRES_HOST": url.hostname or "127.0.0.1", "POSTGRES_PORT": str(url.port or 5432),
           "POSTGRES_USER": url.username or "postgres", "POSTGRES_PASSWORD": url.password or "",
           "POSTGRES_SCHEMA": schema}
    key = os.environ.get("CRMSYNC_CONTENT_KEY")
    return {**env, "CONTENT_KEY": key} if key else env


@pytest.fixture
def nats_url() -> str:
    url = urlparse(NATS_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=3):
            pass
    except OSError as exc:
        missing(f"NATS at {NATS_URL}: {exc}")
    return NATS_URL
