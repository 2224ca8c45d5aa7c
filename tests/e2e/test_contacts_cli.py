"""`crmsync run contacts` as a process on PostgreSQL against the local Graph contacts server:
external contacts come in, a queued change goes out and is acknowledged, the runner's own write
does not come back (C4), and a restart resumes without calling the provider again."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from graph_contacts_server import GraphBook, graph_contacts_app
from loopback import Server
from processes import CRMSYNC

from adapters.credentials.store import KEY_ENV
from domain.events import (
    ExternalContactChangeAcknowledged,
    ExternalContactChangeQueued,
)
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

TOKEN = "eyJ0eXAiOi.graph-access-token.e2e"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
def engine(postgres_url: str, key: str) -> Iterator[Engine]:
    e = open_engine("unused.db", postgres_url)
    e.follow = False
    report = e.apply_lines([orjson.dumps(c) for c in [
        {"cmd": "AddUser", "tenant": "acme", "user": "mia", "email": "mia@acme.test",
         "role": "member"},
        {"cmd": "ConnectMailbox", "tenant": "acme", "mailbox": "mia-o365", "user": "mia",
         "provider": "outlook", "address": "mia@acme.test",
         "credentials": {"access_token": TOKEN}},
        {"cmd": "ConnectContactSync", "tenant": "acme", "user": "mia", "provider": "exchange",
         "categories": ["Clients"]},
        {"cmd": "CreateContact", "tenant": "acme", "record": "c-1", "owner": "mia",
         "name": "Grace", "kind": "person", "emails": ["grace@x.test"]},
    ]])
    assert not report.rejected, report.rejected
    yield e
    e.close()


def recorded(engine: Engine, prefix: str) -> list[dict[str, Any]]:
    """What the runner's commands with this command-id prefix (`xc-in:` SyncExternalContact)
    recorded: per command, the first event naming the external contact — the command as
    recorded, or the contact domain's own event of it."""
    out: dict[str, dict[str, Any]] = {}
    for _, event in engine.events("acme"):
        command_id = event.command_id or ""
        data = event.model_dump(mode="json")
        data = data.get("payload", data)
        if command_id.startswith(prefix) and command_id not in out and "external_id" in data:
            out[command_id] = data
    return list(out.values())


def acks(engine: Engine) -> dict[str, ExternalContactChangeAcknowledged]:
    return {e.change_id: e for _, e in engine.events("acme")
            if isinstance(e, ExternalContactChangeAcknowledged)}


def queue(engine: Engine, change_id: str, **fields: Any) -> None:
    state = engine.state("acme")
    engine.stores().events.append(state, [ExternalContactChangeQueued(
        tenant="acme", actor="system:test", occurred_at=datetime.now(UTC),
        correlation_id=f"test:{change_id}", change_id=change_id, user="mia", **fields)])


def change_for(engine: Engine, record: str, since: int) -> str:
    """The upsert the contact domain queued for mia's book and `record` after log position
    `since` (C6: mia may access the record)."""
    for logged in engine.read_log(since, 10_000):
        event = logged.event
        if (isinstance(event, ExternalContactChangeQueued) and event.record == record
                and event.user == "mia" and event.operation == "upsert"):
            return event.change_id
    raise AssertionError(f"the contact domain queued no upsert of {record} for mia")


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def start(url: str, graph: str, tmp_path: Path, key: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRMSYNC_GRAPH_API_URL": graph, KEY_ENV: key}
    with open(tmp_path / f"contacts-{time.monotonic_ns()}.log", "wb") as out:
        return subprocess.Popen([*CRMSYNC, "--postgres", url, "run", "contacts", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def test_run_contacts_syncs_both_ways_without_echo_and_resumes(
        engine: Engine, postgres_url: str, key: str, tmp_path: Path) -> None:
    book = GraphBook()
    ann = book.put({"displayName": "Ann", "categories": ["Clients"],
                    "emailAddresses": [{"name": "Ann", "address": "ann@x.test"}]})
    book.put({"displayName": "Private", "categories": ["Family"]})
    first = change_for(engine, "c-1", 0)  # queued by the domain when mia connected (C6)
    with Server(graph_contacts_app(book, TOKEN)) as server:
        graph = server.url + "/v1.0"
        runner = start(postgres_url, graph, tmp_path, key, "--interval", "0.3", "--poll", "0.2")
        try:
            wait_until(lambda: first in acks(engine) and bool(recorded(engine, "xc-in:")))
            ack = acks(engine)[first]
            assert ack.ok and ack.external_id in book.contacts
            assert book.contacts[ack.external_id]["categories"] == ["Base Person"]
            [synced] = recorded(engine, "xc-in:")
            assert synced["external_id"] == ann["id"]
            assert synced["fields"] == {"name": "Ann", "emails": ["ann@x.test"]}
            # an external edit comes in; a CRM change made while it runs goes out
            book.put({"companyName": "Acme"}, contact_id=ann["id"])
            mark = engine.head()
            report = engine.apply_lines([orjson.dumps({
                "cmd": "UpdateContact", "tenant": "acme", "record": "c-1",
                "fields": {"name": "Grace Hopper"}})])
            assert not report.rejected
            second = change_for(engine, "c-1", mark)  # the CRM change goes to mia's book (C4)
            wait_until(lambda: second in acks(engine) and len(recorded(engine, "xc-in:")) == 2)
            assert book.contacts[ack.external_id]["displayName"] == "Grace Hopper"
            time.sleep(1.0)  # a few more rounds: our own two writes never come back (C4)
            assert [p["external_id"] for p in recorded(engine, "xc-in:")] == [
                ann["id"], ann["id"]]
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(20) == 0
        finally:
            runner.kill()
        writes = [r for r in book.requests if r[0] in ("POST", "PATCH")]
        assert all(auth == f"Bearer {TOKEN}" for _, _, auth in book.requests)
        again = start(postgres_url, graph, tmp_path, key, "--once")
        assert again.wait(60) == 0
        assert [r for r in book.requests if r[0] in ("POST", "PATCH")] == writes
        assert len(recorded(engine, "xc-in:")) == 2
    logs = b"".join(p.read_bytes() for p in tmp_path.glob("contacts-*.log"))
    assert TOKEN.encode() not in logs


def test_run_contacts_once_on_embedded_sqlite_keeps_its_position_in_the_file(
        tmp_path: Path, key: str) -> None:
    db = str(tmp_path / "crm.db")
    engine = Engine.open_sqlite(db)
    try:
        report = engine.apply_lines([orjson.dumps(c) for c in [
            {"cmd": "AddUser", "tenant": "acme", "user": "mia", "email": "mia@acme.test",
             "role": "member"},
            {"cmd": "ConnectMailbox", "tenant": "acme", "mailbox": "mia-o365", "user": "mia",
             "provider": "outlook", "address": "mia@acme.test",
             "credentials": {"access_token": TOKEN}},
            {"cmd": "ConnectContactSync", "tenant": "acme", "user": "mia",
             "provider": "exchange", "categories": ["Clients"]},
        ]])
        assert not report.rejected
        queue(engine, "t-1", operation="upsert", fields={"name": "Grace"}, categories=[])
    finally:
        engine.close()
    book = GraphBook()
    book.put({"displayName": "Ann", "categories": ["Clients"]})
    with Server(graph_contacts_app(book, TOKEN)) as server:
        env = {**os.environ, "CRMSYNC_GRAPH_API_URL": server.url + "/v1.0", KEY_ENV: key}
        for _ in range(2):
            done = subprocess.run([*CRMSYNC, "--db", db, "run", "contacts", "--once"], env=env,
                                  capture_output=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr.decode()
    engine = Engine.open_sqlite(db)
    try:
        assert acks(engine)["t-1"].ok and len(recorded(engine, "xc-in:")) == 1
    finally:
        engine.close()
    assert len([r for r in book.requests if r[0] == "POST"]) == 1
