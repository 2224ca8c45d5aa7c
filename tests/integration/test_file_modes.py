"""SPEC §8: files holding mail, keys or credentials are readable by their owner only — whatever
the umask. A fresh embedded run (engine, views, credentials and their key file, webhook inbox,
work queue, with their -wal/-shm companions and lock files) leaves only 0600 files."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from adapters.credentials.store import KEY_ENV, KEY_FILE_SUFFIX
from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.deliveries.work_sqlite import SqliteWork
from runners.bootstrap.config import open_engine
from runners.entrypoints.serve import webhook_inbox

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, tzinfo=UTC)
COMMANDS = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@gmail.test", "credentials": {"access_token": "ya29.secret"}},
]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(folder: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.iterdir())
            if p.is_file()}


def test_section8_every_file_of_a_fresh_embedded_run_is_0600(
        tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)  # the key goes to the key file beside the db
    for name in ("CRMSYNC_NATS_URL", "CRMSYNC_POSTGRES_URL", "CRMSYNC_WEBHOOK_INBOX"):
        monkeypatch.delenv(name, raising=False)
    db = str(tmp_path / "crmsync.db")
    engine = open_engine(db)
    try:
        report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in COMMANDS],
                                    now=NOW)
        assert report.applied == len(COMMANDS), report.rejected
        assert engine.credentials is not None
        stored = engine.credentials.get("acme", "mia-gmail")
        assert stored is not None and stored["access_token"] == "ya29.secret"
        inbox = webhook_inbox(db)  # crmsync.webhooks.db beside the engine's file
        assert isinstance(inbox, SqliteInbox)

        async def deliver_and_work() -> int:
            assert await inbox.deliver("gmail", "gmail:1", b'{"history_id": 1}')
            work = SqliteWork(inbox.path)
            taken = await work.fetch(10, 0)
            for delivery in taken:
                await work.ack(delivery)
            await work.close()
            await inbox.close()
            return len(taken)

        assert asyncio.run(deliver_and_work()) == 1
        found = modes(tmp_path)  # while open: the -wal and -shm files exist
    finally:
        engine.close()
    assert {"crmsync.db", "crmsync.db-wal", "crmsync.db-shm", "crmsync.webhooks.db",
            "crmsync.db" + KEY_FILE_SUFFIX} <= set(found), found
    assert found == dict.fromkeys(found, "0o600")


def test_section8_files_an_earlier_version_made_readable_are_tightened(
        tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "crmsync.webhooks.db"
    inbox = SqliteInbox(str(path))
    asyncio.run(inbox.deliver("gmail", "gmail:1", b"{}"))
    asyncio.run(inbox.close())
    for name in ("crmsync.webhooks.db", "crmsync.webhooks.db-wal", "crmsync.webhooks.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    reopened = SqliteInbox(str(path))
    assert asyncio.run(reopened.deliver("gmail", "gmail:2", b"{}"))
    found = modes(tmp_path)
    asyncio.run(reopened.close())
    assert found and found == dict.fromkeys(found, "0o600")


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o277])
def test_section8_a_new_store_file_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        work = SqliteWork(str(tmp_path / "work.db"))
        asyncio.run(work.close())
    finally:
        os.umask(previous)
    found = modes(tmp_path)
    assert "work.db" in found and found == dict.fromkeys(found, "0o600")
