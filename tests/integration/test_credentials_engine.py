"""Credentials through the engine (SPEC §6): ConnectMailbox writes them to the encrypted store and
never to an event; DisconnectMailbox and DeleteUser erase them, driven by `CredentialsRemoved`;
a crash between append and erase is healed by `erase_removed`; a failed write is finished by
sending the same command again."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.credentials.store import KEY_ENV
from adapters.errors import CredentialStoreError
from runners.bootstrap.config import open_engine
from runners.services.credentials import erase_removed
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

PASSWORD = "pa55-Hunter2-Secret!"
TOKEN = "ya29.a0AfH6SMBx-very-secret-access-token"
IMAP = {"host": "imap.example.test", "port": 993, "user": "mia@example.test",
        "password": PASSWORD, "tls": True}
OAUTH = {"access_token": TOKEN, "refresh_token": "1//refresh-secret"}
NOW = datetime(2026, 3, 1, tzinfo=UTC)

SETUP = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-imap", "user": "mia", "provider": "imap",
     "address": "mia@acme.test", "credentials": IMAP, "command_id": "connect-imap"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@gmail.test", "credentials": OAUTH},
]


def lines(*commands: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps({"tenant": "acme", **c}) for c in commands]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    return str(tmp_path / "crmsync.db")


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    opened = Engine.open_sqlite(db)
    report = opened.apply_lines(lines(*SETUP), now=NOW)
    assert report.applied == len(SETUP), report.rejected
    yield opened
    opened.close()


def stored(engine: Engine, mailbox: str) -> dict[str, Any] | None:
    assert engine.credentials is not None
    return engine.credentials.get("acme", mailbox)


def all_events(engine: Engine) -> bytes:
    return b"\n".join(orjson.dumps(logged.event.model_dump(mode="json"))
                      for logged in engine.read_log(0, 1_000_000))


def test_connect_stores_credentials_and_no_event_carries_them(engine: Engine, db: str) -> None:
    assert stored(engine, "mia-imap") == IMAP
    assert stored(engine, "mia-gmail") == {**OAUTH, "expires_at": None}
    log = all_events(engine)
    assert b'"credentials_set":true' in log
    for secret in (PASSWORD, TOKEN, "refresh-secret", "Hunter2"):
        assert secret.encode() not in log
    engine.catch_up()
    for name in (db, f"{db}-wal"):  # nor anywhere in the database file, views included
        if os.path.exists(name):
            raw = Path(name).read_bytes()
            assert PASSWORD.encode() not in raw
            assert TOKEN.encode() not in raw


def test_disconnect_erases(engine: Engine) -> None:
    report = engine.apply_lines(lines({"cmd": "DisconnectMailbox", "mailbox": "mia-imap"}),
                                now=NOW)
    assert report.applied == 1
    assert stored(engine, "mia-imap") is None
    assert stored(engine, "mia-gmail") is not None
    # reconnecting does not bring them back: the mailbox stays without credentials
    engine.apply_lines(lines({"cmd": "ReconnectMailbox", "mailbox": "mia-imap"}), now=NOW)
    assert stored(engine, "mia-imap") is None
    assert not engine.state("acme").mailboxes["mia-imap"].credentials_set


def test_delete_user_erases_every_mailbox_of_the_user(engine: Engine) -> None:
    report = engine.apply_lines(lines({"cmd": "DeleteUser", "user": "mia"}), now=NOW)
    assert report.applied == 1, report.rejected
    assert stored(engine, "mia-imap") is None
    assert stored(engine, "mia-gmail") is None
    assert engine.credentials is not None and engine.credentials.is_empty()


def test_a_crash_between_append_and_erase_is_healed_at_start(
        engine: Engine, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.credentials is not None

    def crash(tenant: str, mailbox: str) -> None:
        raise CredentialStoreError("simulated crash before the erase")

    monkeypatch.setattr(engine.credentials, "erase", crash)
    with pytest.raises(CredentialStoreError, match="simulated"):
        engine.apply_lines(lines({"cmd": "DeleteUser", "user": "mia"}), now=NOW)
    monkeypatch.undo()
    assert engine.state("acme").users["mia"].status == "deleted"  # the event stands
    assert stored(engine, "mia-imap") == IMAP  # ... but the erase did not happen
    engine.close()

    reopened = open_engine(db)  # erase_removed runs when an engine opens
    try:
        assert stored(reopened, "mia-imap") is None
        assert stored(reopened, "mia-gmail") is None
        assert erase_removed(reopened) == 0  # idempotent, and the log is not read again
    finally:
        reopened.close()


def test_erase_removed_reads_the_whole_log_and_keeps_live_credentials(engine: Engine) -> None:
    assert engine.credentials is not None
    engine.apply_lines(lines({"cmd": "DisconnectMailbox", "mailbox": "mia-gmail"}), now=NOW)
    engine.credentials.put("acme", "mia-gmail", OAUTH)  # a leftover the erase missed
    assert erase_removed(engine) == 1
    assert stored(engine, "mia-gmail") is None
    assert stored(engine, "mia-imap") == IMAP
    engine.credentials.put("acme", "mia-gmail", OAUTH)
    assert erase_removed(engine) == 0  # nothing new in the log since
    engine.apply_lines(lines({"cmd": "AddUser", "user": "max", "email": "max@acme.test",
                              "role": "member"}), now=NOW)
    assert erase_removed(engine) == 0  # new events, but no removal among them
    assert stored(engine, "mia-imap") == IMAP


def test_a_failed_write_leaves_the_event_and_is_finished_by_the_same_command(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.open_sqlite(db)
    try:
        assert engine.credentials is not None
        engine.apply_lines(lines(*SETUP[:2]), now=NOW)

        def broken(tenant: str, mailbox: str, credentials: dict[str, Any]) -> None:
            raise CredentialStoreError("database is locked")

        monkeypatch.setattr(engine.credentials, "put", broken)
        with pytest.raises(CredentialStoreError, match="were not stored") as caught:
            engine.apply_lines(lines(SETUP[2]), now=NOW)
        assert PASSWORD not in str(caught.value)
        monkeypatch.undo()
        mailbox = engine.state("acme").mailboxes["mia-imap"]
        assert mailbox.credentials_set  # the mailbox says set ...
        assert stored(engine, "mia-imap") is None  # ... the sync reports them missing
        report = engine.apply_lines(lines(SETUP[2]), now=NOW)  # the same command_id again
        assert report.unchanged == 1
        assert stored(engine, "mia-imap") == IMAP
    finally:
        engine.close()


def test_without_a_key_the_embedded_engine_makes_one(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    db = str(tmp_path / "crmsync.db")
    engine = open_engine(db)
    try:
        engine.apply_lines(lines(*SETUP), now=NOW)
        assert stored(engine, "mia-imap") == IMAP
        assert (os.stat(f"{db}.credentials-key").st_mode & 0o777) == 0o600
    finally:
        engine.close()


def test_postgres_without_a_key_refuses_before_appending(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    engine = open_engine("unused.db", postgres_url)
    try:
        assert engine.apply_lines(lines(*SETUP[:2]), now=NOW).applied == 2
        with pytest.raises(CredentialStoreError, match=f"{KEY_ENV} is not set"):
            engine.apply_lines(lines(SETUP[2]), now=NOW)
        assert "mia-imap" not in engine.state("acme").mailboxes  # nothing half-done
    finally:
        engine.close()
