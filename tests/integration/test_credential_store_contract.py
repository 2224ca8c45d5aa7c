"""One contract for the mailbox credential store, on SQLite (a temp file) and PostgreSQL (a fresh
schema): round trip, nothing readable at rest, rows bound to their mailbox, wrong keys refused
with our error, erasure; then each adapter's behaviour without a configured key."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.credentials.store import KEY_ENV, CredentialStore
from adapters.credentials.store_postgres import PostgresCredentialStore
from adapters.credentials.store_sqlite import SqliteCredentialStore
from adapters.errors import CredentialStoreError, StoreError

pytestmark = pytest.mark.integration

PASSWORD = "pa55-Hunter2-Secret!"
TOKEN = "ya29.a0AfH6SMBx-very-secret-access-token"
IMAP = {"host": "imap.example.test", "port": 993, "user": "mia@example.test",
        "password": PASSWORD, "tls": True}
OAUTH = {"access_token": TOKEN, "refresh_token": "1//refresh-secret", "expires_at": None}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class Backend:
    name: str
    open: Callable[[], CredentialStore]
    sql: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]  # raw SQL on the same tables


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    monkeypatch.setenv(KEY_ENV, new_key())
    if request.param == "sqlite":
        path = str(tmp_path / "crmsync.db")

        def sqlite_sql(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path, isolation_level=None) as conn:
                return list(conn.execute(query, params).fetchall())

        yield Backend("sqlite", lambda: SqliteCredentialStore(path, os.environ.get(KEY_ENV)),
                      sqlite_sql)
    else:
        url: str = request.getfixturevalue("postgres_url")

        def pg_sql(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(query.replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description is not None else []

        yield Backend("postgres", lambda: PostgresCredentialStore(url, os.environ.get(KEY_ENV)),
                      pg_sql)


@pytest.fixture
def store(backend: Backend) -> Iterator[CredentialStore]:
    opened = backend.open()
    yield opened
    opened.close()


def test_round_trip(store: CredentialStore) -> None:
    assert store.get("acme", "mia-imap") is None
    store.put("acme", "mia-imap", IMAP)
    store.put("acme", "mia-gmail", OAUTH)
    store.put("other", "mia-imap", OAUTH)  # same mailbox id, another tenant
    assert store.get("acme", "mia-imap") == IMAP
    assert store.get("acme", "mia-gmail") == OAUTH
    assert store.get("other", "mia-imap") == OAUTH
    store.put("acme", "mia-imap", {**IMAP, "password": "new"})  # overwrite
    assert store.get("acme", "mia-imap") == {**IMAP, "password": "new"}


def test_survives_reopening(backend: Backend) -> None:
    first = backend.open()
    first.put("acme", "mia-imap", IMAP)
    first.close()
    second = backend.open()
    try:
        assert second.get("acme", "mia-imap") == IMAP
    finally:
        second.close()


def test_nothing_readable_at_rest(backend: Backend, store: CredentialStore) -> None:
    store.put("acme", "mia-imap", IMAP)
    store.put("acme", "mia-gmail", OAUTH)
    rows = backend.sql("SELECT tenant, mailbox, nonce, ciphertext, key_id, updated_at "
                       "FROM mailbox_credentials", ())
    assert len(rows) == 2
    key = base64.b64decode(os.environ[KEY_ENV])
    for row in rows:
        blob = b"".join(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                        for v in row)
        for secret in (PASSWORD, TOKEN, "refresh-secret", "imap.example.test", "Hunter2",
                       "very-secret"):
            assert secret.encode() not in blob
        assert key not in blob
        assert os.environ[KEY_ENV].encode() not in blob
        assert len(bytes(row[2])) == 12
    # a fresh nonce per write: the same value twice is two different ciphertexts
    store.put("acme", "mia-gmail", OAUTH)
    again = backend.sql("SELECT nonce, ciphertext FROM mailbox_credentials WHERE mailbox = ?",
                        ("mia-gmail",))
    before = next(r for r in rows if r[1] == "mia-gmail")
    assert bytes(again[0][0]) != bytes(before[2])
    assert bytes(again[0][1]) != bytes(before[3])


def test_a_row_moved_to_another_mailbox_does_not_decrypt(backend: Backend,
                                                         store: CredentialStore) -> None:
    store.put("acme", "mia-imap", IMAP)
    store.put("acme", "max-imap", {**IMAP, "password": "max's"})
    nonce, sealed, key_id = backend.sql("SELECT nonce, ciphertext, key_id FROM "
                                        "mailbox_credentials WHERE mailbox = ?", ("mia-imap",))[0]
    backend.sql("UPDATE mailbox_credentials SET nonce = ?, ciphertext = ?, key_id = ? "
                "WHERE mailbox = ?", (bytes(nonce), bytes(sealed), key_id, "max-imap"))
    backend.sql("INSERT INTO mailbox_credentials (tenant, mailbox, nonce, ciphertext, key_id, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                ("evil", "mia-imap", bytes(nonce), bytes(sealed), key_id, "2026-01-01"))
    for tenant, mailbox in (("acme", "max-imap"), ("evil", "mia-imap")):
        with pytest.raises(CredentialStoreError, match="do not decrypt") as caught:
            store.get(tenant, mailbox)
        assert PASSWORD not in str(caught.value)
    assert store.get("acme", "mia-imap") == IMAP  # the original is untouched


def test_a_tampered_ciphertext_does_not_decrypt(backend: Backend, store: CredentialStore) -> None:
    store.put("acme", "mia-imap", IMAP)
    sealed = bytearray(backend.sql("SELECT ciphertext FROM mailbox_credentials", ())[0][0])
    sealed[0] ^= 1
    backend.sql("UPDATE mailbox_credentials SET ciphertext = ?", (bytes(sealed),))
    with pytest.raises(CredentialStoreError, match="do not decrypt"):
        store.get("acme", "mia-imap")


def test_a_wrong_key_fails_with_our_error(backend: Backend, store: CredentialStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store.put("acme", "mia-imap", IMAP)
    wrong = new_key()
    monkeypatch.setenv(KEY_ENV, wrong)
    other = backend.open()
    try:
        with pytest.raises(CredentialStoreError, match="not the configured key") as caught:
            other.get("acme", "mia-imap")
        text = str(caught.value)
        assert PASSWORD not in text
        assert wrong not in text
        assert isinstance(caught.value, StoreError)  # the CLI's exit 4, the API's 503
        # the key id matches but the key does not (a forged key id): still our error
        real_id = backend.sql("SELECT key_id FROM mailbox_credentials", ())[0][0]
        other.put("acme", "max-imap", IMAP)
        backend.sql("UPDATE mailbox_credentials SET key_id = (SELECT key_id FROM "
                    "mailbox_credentials WHERE mailbox = ?) WHERE mailbox = ?",
                    ("max-imap", "mia-imap"))
        assert real_id != backend.sql("SELECT key_id FROM mailbox_credentials WHERE "
                                      "mailbox = ?", ("mia-imap",))[0][0]
        with pytest.raises(CredentialStoreError, match="do not decrypt"):
            other.get("acme", "mia-imap")
    finally:
        other.close()


def test_a_malformed_key_is_refused_without_showing_it(backend: Backend,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("not base64 at all!!", base64.b64encode(b"short").decode()):
        monkeypatch.setenv(KEY_ENV, bad)
        opened = backend.open()
        try:
            with pytest.raises(CredentialStoreError, match=KEY_ENV) as caught:
                opened.put("acme", "mia-imap", IMAP)
            assert bad not in str(caught.value)
        finally:
            opened.close()


def test_erase(backend: Backend, store: CredentialStore) -> None:
    store.put("acme", "mia-imap", IMAP)
    store.put("acme", "max-imap", IMAP)
    store.erase("acme", "mia-imap")
    store.erase("acme", "mia-imap")  # idempotent
    store.erase("acme", "nobody")
    assert store.get("acme", "mia-imap") is None
    assert store.get("acme", "max-imap") == IMAP
    assert backend.sql("SELECT mailbox FROM mailbox_credentials", ()) == [("max-imap",)]
    store.erase("acme", "max-imap")
    assert store.is_empty()


def test_erasure_position_only_moves_forward(store: CredentialStore) -> None:
    assert store.erasure_position() == 0
    store.advance_erasure(7)
    store.advance_erasure(3)
    assert store.erasure_position() == 7


# -- without a configured key --------------------------------------------------------------------


def test_sqlite_generates_a_private_key_file_beside_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = str(tmp_path / "crmsync.db")
    store = SqliteCredentialStore(path)
    key_file = Path(path + ".credentials-key")
    store.erase("acme", "mia-imap")  # erasing needs no key and creates none
    assert store.get("acme", "mia-imap") is None
    assert not key_file.exists()
    store.put("acme", "mia-imap", IMAP)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    store.close()
    reopened = SqliteCredentialStore(path)
    assert reopened.get("acme", "mia-imap") == IMAP
    reopened.close()
    key_file.chmod(0o644)
    exposed = SqliteCredentialStore(path)
    with pytest.raises(CredentialStoreError, match="readable by others"):
        exposed.get("acme", "mia-imap")
    exposed.close()
    key_file.unlink()
    lost = SqliteCredentialStore(path)
    with pytest.raises(CredentialStoreError, match="no key is configured"):
        lost.get("acme", "mia-imap")
    lost.close()


def test_postgres_refuses_to_store_without_a_key(postgres_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    store = PostgresCredentialStore(postgres_url)
    try:
        with pytest.raises(CredentialStoreError, match=f"{KEY_ENV} is not set") as caught:
            store.put("acme", "mia-imap", IMAP)
        assert PASSWORD not in str(caught.value)
        with pytest.raises(CredentialStoreError, match="not set"):
            store.ready()
        assert store.get("acme", "mia-imap") is None
        store.erase("acme", "mia-imap")
        assert store.is_empty()
    finally:
        store.close()
