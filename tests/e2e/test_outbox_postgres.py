"""`crmsync run outbox` as a process on PostgreSQL against a local Gmail API stand-in (S7, S12):
CRM-sent mail is delivered and acknowledged, a provider failure is retried, a CRM deletion
trashes the provider's copy, SIGTERM stops it cleanly, and its position is durable."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from outbound_servers import MAILBOX, TOKEN, GmailServer
from processes import CRMSYNC

from adapters.credentials.store import KEY_ENV
from adapters.tracking.outbox_postgres import PostgresOutboxTracking
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

SEND = {"cmd": "SendEmail", "user": "mia", "mailbox": "mb-mia", "kind": "single",
        "to": ["carla@customer.test"], "subject": "Offer", "body": "Hello Carla"}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
def engine(postgres_url: str, key: str) -> Iterator[Engine]:
    opened = open_engine("unused.db", postgres_url)
    yield opened
    opened.close()


@pytest.fixture
def gmail() -> Iterator[GmailServer]:
    server = GmailServer()
    yield server
    server.close()


def apply(engine: Engine, *commands: dict[str, Any]) -> None:
    report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in commands],
                                now=datetime.now(UTC))
    assert not report.rejected, report.rejected


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def acks(engine: Engine) -> list[ev.OutboundMailAcknowledged]:
    return [e for _, e in engine.events("acme")
            if isinstance(e, ev.OutboundMailAcknowledged)]


def test_s7_outbox_process_delivers_retries_and_trashes_on_postgres(
        engine: Engine, postgres_url: str, gmail: GmailServer, key: str, tmp_path: Path) -> None:
    apply(engine,
          {"cmd": "AddUser", "user": "mia", "email": MAILBOX, "role": "member"},
          {"cmd": "ConnectMailbox", "mailbox": "mb-mia", "user": "mia", "provider": "gmail",
           "address": MAILBOX, "credentials": {"access_token": TOKEN}},
          SEND)
    log_path = tmp_path / "outbox.log"
    env = {**os.environ, KEY_ENV: key, "CRMSYNC_GMAIL_API_URL": gmail.origin}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [*CRMSYNC, "--postgres", postgres_url, "run", "outbox", "--poll", "0.2",
             "--backoff", "0.1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: len(acks(engine)) == 1)
        [first] = acks(engine)
        assert first.ok and first.provider_id in gmail.messages
        assert gmail.messages[first.provider_id].message_id == f"<{first.id}.acme@crmsync.invalid>"
        state = engine.state("acme")
        assert state.messages[("mb-mia", first.id)].delivery_status == "sent"

        # the provider fails once (500): retried after the backoff, sent once
        gmail.failures = [(500, {}, {"error": {"code": 500, "message": "backend error"}})]
        apply(engine, SEND)
        wait_until(lambda: len(acks(engine)) == 2)
        second = acks(engine)[1]
        assert second.ok and second.attempts == 2
        assert len(gmail.messages) == 2

        # deleted in the CRM: trashed at the provider
        apply(engine, {"cmd": "DeleteMessage", "user": "mia", "mailbox": "mb-mia",
                       "id": first.id})
        wait_until(lambda: len(acks(engine)) == 3)
        assert gmail.messages[first.provider_id].trashed
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    assert code == 0
    output = log_path.read_text()
    assert "outbox_acknowledged" in output and TOKEN not in output
    tracking = PostgresOutboxTracking(postgres_url)
    try:
        assert tracking.position() == engine.head()
    finally:
        tracking.close()


def test_s7_outbox_process_on_the_embedded_sqlite_file(gmail: GmailServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)  # embedded: the key file beside the database
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    db = str(tmp_path / "crmsync.db")
    engine = Engine.open_sqlite(db)
    try:
        apply(engine,
              {"cmd": "AddUser", "user": "mia", "email": MAILBOX, "role": "member"},
              {"cmd": "ConnectMailbox", "mailbox": "mb-mia", "user": "mia", "provider": "gmail",
               "address": MAILBOX, "credentials": {"access_token": TOKEN}},
              SEND)
        env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "CRMSYNC_POSTGRES_URL")}
        worker = subprocess.Popen(
            [*CRMSYNC, "--db", db, "run", "outbox", "--poll", "0.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**env, "CRMSYNC_GMAIL_API_URL": gmail.origin})
        try:
            wait_until(lambda: len(acks(engine)) == 1)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        [ack] = acks(engine)
        assert ack.ok and ack.provider_id in gmail.messages
    finally:
        engine.close()


def test_s7_worker_killed_after_the_provider_accepted_does_not_send_twice(
        engine: Engine, postgres_url: str, gmail: GmailServer, key: str) -> None:
    apply(engine,
          {"cmd": "AddUser", "user": "mia", "email": MAILBOX, "role": "member"},
          {"cmd": "ConnectMailbox", "mailbox": "mb-mia", "user": "mia", "provider": "gmail",
           "address": MAILBOX, "credentials": {"access_token": TOKEN}},
          SEND)
    env = {**os.environ, KEY_ENV: key, "CRMSYNC_GMAIL_API_URL": gmail.origin}
    command = [*CRMSYNC, "--postgres", postgres_url, "run", "outbox", "--poll", "0.2"]
    gmail.hold = threading.Event()
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
    try:
        assert gmail.send_arrived.wait(30), "the worker never sent"
        first.send_signal(signal.SIGKILL)  # accepted by the provider, no ack in the log
        first.wait(10)
    finally:
        first.kill()
        gmail.hold.set()
    assert len(gmail.messages) == 1 and acks(engine) == []
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env)
    try:
        wait_until(lambda: len(acks(engine)) == 1)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    [ack] = acks(engine)
    [(provider_id, stored)] = gmail.messages.items()
    assert ack.ok and ack.provider_id == provider_id
    assert stored.message_id == f"<{ack.id}.acme@crmsync.invalid>"
    sends = [path for method, path, _ in gmail.seen if method == "POST" and
             path.endswith("/messages/send")]
    assert len(sends) == 1  # the restarted worker found it by Message-ID


def test_s7_serve_with_outbox_delivers_in_process(gmail: GmailServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    db = str(tmp_path / "crmsync.db")
    engine = Engine.open_sqlite(db)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, "CRMSYNC_POSTGRES_URL")}
    server = subprocess.Popen(
        [*CRMSYNC, "--db", db, "serve", "--outbox", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**env, "CRMSYNC_GMAIL_API_URL": gmail.origin,
             "CRMSYNC_SECRET": "outbox-e2e-secret-0123456789"})
    try:
        apply(engine,
              {"cmd": "AddUser", "user": "mia", "email": MAILBOX, "role": "member"},
              {"cmd": "ConnectMailbox", "mailbox": "mb-mia", "user": "mia", "provider": "gmail",
               "address": MAILBOX, "credentials": {"access_token": TOKEN}},
              SEND)
        wait_until(lambda: len(acks(engine)) == 1)
        wait_until(lambda: listening(port))  # and it serves
        [ack] = acks(engine)
        assert ack.ok and ack.provider_id in gmail.messages
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        engine.close()
    # uvicorn re-raises SIGTERM after its graceful shutdown; the outbox thread ends with the
    # process, which is safe: a restarted outbox looks every send up before sending
    assert code in (0, -signal.SIGTERM)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
