"""Issue #13 point 10 (C4) end to end: a CRM change made while the first upsert of a contact to
Exchange is unacknowledged reaches the book after the acknowledgement, and nothing echoes.
`crmsync run contacts --once` as a process on a SQLite file against the local Graph server."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import orjson
import pytest
from graph_contacts_server import GraphBook, graph_contacts_app
from loopback import Server
from processes import CRMSYNC
from test_contacts_cli import TOKEN, acks, recorded

from adapters.credentials.store import KEY_ENV
from domain.events import ExternalContactChangeQueued
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

SETUP = [
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-o365", "user": "mia", "provider": "outlook",
     "address": "mia@acme.test", "credentials": {"access_token": TOKEN}},
    {"cmd": "ConnectContactSync", "user": "mia", "provider": "exchange",
     "categories": ["Clients"]},
    {"cmd": "CreateContact", "record": "c-1", "owner": "mia", "name": "Grace", "kind": "person",
     "emails": ["grace@x.test"], "customer_status": "current"},
    # the creation above is queued, not yet executed nor acknowledged
    {"cmd": "UpdateContact", "record": "c-1", "fields": {"customer_status": "past"}},
]


def test_c4_change_made_before_the_first_upsert_is_acknowledged_reaches_exchange(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "crm.db")
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(KEY_ENV, key)  # the engine stores the mailbox's token with it
    engine = Engine.open_sqlite(db)
    try:
        report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in SETUP])
        assert not report.rejected, report.rejected
    finally:
        engine.close()
    book = GraphBook()
    with Server(graph_contacts_app(book, TOKEN)) as server:
        env = {**os.environ, "CRMSYNC_GRAPH_API_URL": server.url + "/v1.0", KEY_ENV: key}
        for _ in range(3):  # create + ack, then the upsert the ack queued, then nothing
            done = subprocess.run([*CRMSYNC, "--db", db, "run", "contacts", "--once"],
                                  env=env, capture_output=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr.decode()
    engine = Engine.open_sqlite(db)
    try:
        changes = [e for _, e in engine.events("acme")
                   if isinstance(e, ExternalContactChangeQueued)]
        answered = acks(engine)
        echoes = recorded(engine, "xc-in:")
    finally:
        engine.close()
    assert [(c.operation, c.external_id, c.categories) for c in changes] == [
        ("upsert", None, ["Base Person", "Base Current Customer"]),
        ("upsert", answered[changes[0].change_id].external_id,
         ["Base Person", "Base Past Customer"])]
    assert all(answered[c.change_id].ok for c in changes)
    [(contact_id, stored)] = book.contacts.items()
    assert contact_id == changes[1].external_id
    assert stored["categories"] == ["Base Person", "Base Past Customer"]
    assert [r[0] for r in book.requests if r[0] in ("POST", "PATCH", "DELETE")] == [
        "POST", "PATCH"]
    assert echoes == []  # the runner's own two writes never came back as external edits
