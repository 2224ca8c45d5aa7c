"""No process-wide lock in the HTTP API (issue #10, point 6): live and `at` reads answer while a
command is inside its apply; a long post is applied in chunks with every line counted once.
(`at` answers read the views' histories since issue #11, at the cost of a live read.)

A real uvicorn on loopback and a SQLite engine whose event store can be held inside an append
(a threading.Event gate, no sleeps).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback import Server
from office import OFFICE

from adapters.eventstore.store import EventStore
from adapters.http.api import create_app
from adapters.http.commands import COMMAND_CHUNK
from adapters.http.tokens import issue
from adapters.views.sqlite import SqliteViews
from domain.events import LeadCreated
from domain.state import TenantState
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

SECRET = b"test-secret-0123456789abcdef"
JSONL = {"content-type": "application/x-ndjson"}
AT = "2026-01-02T01:00:00Z"  # after every setup command


def token(user: str, service: bool = False) -> dict[str, str]:
    return {"authorization": f"Bearer {issue(SECRET, 'acme', user, service)}"}


SERVICE, ADA = token("provisioner", service=True), token("ada")


def jsonl(commands: list[dict[str, Any]], timed: bool = False) -> str:
    """JSON Lines for tenant acme; `timed`: at 2026-01-02T00:00:0i (else at the server's now)."""
    return "".join(json.dumps({"tenant": "acme", **c, **(
        {"at": f"2026-01-02T00:00:{i:02d}Z"} if timed else {})}) + "\n"
        for i, c in enumerate(commands))


def leads(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"cmd": "CreateLead", "record": f"{prefix}-{i}", "owner": "mia", "name": f"L {i}",
             "emails": [f"{prefix}{i}@x.test"]} for i in range(count)]


class GatedStore(EventStore):
    """The SQLite event store, with one append held until `release`."""

    def __init__(self, path: str) -> None:
        super().__init__({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
                          "SQLITE_LOCK_TIMEOUT": "10"})
        self.hold_append = False
        self.entered, self.release = threading.Event(), threading.Event()
        self._gate = threading.Lock()

    def _held(self, armed: str) -> bool:
        with self._gate:
            if not getattr(self, armed):
                return False
            setattr(self, armed, False)  # the first caller only
        self.entered.set()
        assert self.release.wait(30), "the test never released the gate"
        return True

    def append(self, state: TenantState, events: Any) -> None:
        self._held("hold_append")
        super().append(state, events)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[httpx.Client, GatedStore, Engine]]:
    path = str(tmp_path / "crmsync.db")
    store = GatedStore(path)
    engine = Engine(store, SqliteViews(path), path)
    app = create_app(engine, SECRET, max_wait=5)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        answer = client.post("/v1/commands", content=jsonl(OFFICE, timed=True),
                             headers={**SERVICE, **JSONL})
        assert answer.json()["applied"] == len(OFFICE), answer.text
        yield client, store, engine
        store.release.set()
    engine.close()


def lead_ids_in_log(store: EventStore, prefix: str) -> list[str]:
    return [e.record for _, e in EventStore.tenant_events(store, "acme")
            if isinstance(e, LeadCreated) and e.record.startswith(prefix)]


def test_live_reads_answer_while_a_command_is_held_inside_its_append(
        setup: tuple[httpx.Client, GatedStore, Engine]) -> None:
    client, store, _ = setup
    before = client.get("/v1/records/lead-1/timeline", headers=ADA)
    assert before.status_code == 200 and len(before.json()) == 1
    store.hold_append = True
    with ThreadPoolExecutor(1) as pool:
        post = pool.submit(client.post, "/v1/commands", content=jsonl(leads("held", 30)),
                           headers={**SERVICE, **JSONL})
        assert store.entered.wait(10), "the command never reached its append"
        # the writer is inside the engine: the old code queued these behind its lock
        during = client.get("/v1/records/lead-1/timeline", headers=ADA)
        as_of = client.get("/v1/records/lead-1/timeline", params={"at": AT}, headers=ADA)
        records = client.get("/v1/records", headers=ADA)
        assert not post.done()
        store.release.set()
        answer = post.result(timeout=30).json()
    assert during.status_code == 200 and during.json() == before.json()
    assert as_of.status_code == 200 and as_of.json() == before.json()
    assert records.status_code == 200
    assert not any(r["record"].startswith("held-") for r in records.json())
    assert answer["applied"] == 30 and answer["rejected"] == 0
    assert sorted(lead_ids_in_log(store, "held-")) == sorted(f"held-{i}" for i in range(30))
    after = client.get("/v1/records", headers=ADA).json()
    assert sum(r["record"].startswith("held-") for r in after) == 30


def test_a_long_post_is_applied_in_chunks_each_line_once_numbered_in_the_body(
        setup: tuple[httpx.Client, GatedStore, Engine]) -> None:
    client, store, _ = setup
    commands = leads("bulk", 2 * COMMAND_CHUNK + 50)
    bad = {0, COMMAND_CHUNK, 2 * COMMAND_CHUNK + 49}  # first line of chunks 1, 2; the last line
    for i in bad:
        commands[i] = {**commands[i], "owner": "nobody"}
    answer = client.post("/v1/commands", content=jsonl(commands), headers={**SERVICE, **JSONL})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rejected = {r["line"] for r in body["results"] if r["result"] == "rejected"}
    assert rejected == {i + 1 for i in bad}
    assert [r["line"] for r in body["results"]] == list(range(1, len(commands) + 1))
    assert body["applied"] == len(commands) - 3 and body["rejected"] == 3
    in_log = lead_ids_in_log(store, "bulk-")
    assert sorted(in_log) == sorted(f"bulk-{i}" for i in range(len(commands)) if i not in bad)
