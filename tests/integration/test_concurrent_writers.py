"""E6 with real stores (SQLite and PostgreSQL): concurrent writers lose no command (issue #10).

Each writer has its own engine (its own connections and cached state, as a process has) and a
clock of its own, skewed against the others' as clocks of different hosts are: every valid
command must be applied exactly once. We count what went in against what came out: events in the
store and rows in the views, never a cursor.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from loopback import Server
from sync_fakes import FakeSources, message

from adapters.deliveries.work_queue import Delivery
from adapters.http.api import create_app
from adapters.http.tokens import issue
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

TENANT = "acme"
SECRET = b"test-secret-0123456789abcdef"
SETUP: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "leo-gmail", "user": "leo", "provider": "gmail",
     "address": "leo@acme.test"},
]


class Engines:
    """Engines on one store, each with connections of its own (as processes have); `reader` is
    the first, which set the tenant up and reads the results (few connections: the PostgreSQL
    server is shared)."""

    def __init__(self, open_one: Callable[[], Engine]) -> None:
        self.open_one = open_one
        self.opened: list[Engine] = []
        self.reader = self.open()

    def open(self) -> Engine:
        self.opened.append(self.open_one())
        return self.opened[-1]


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engines]:
    if request.param == "sqlite":
        path = str(tmp_path / "crmsync.db")
        engines = Engines(lambda: Engine.open_sqlite(path))
    else:
        url = request.getfixturevalue("postgres_url")
        engines = Engines(lambda: open_engine(str(tmp_path / "unused.db"), url))
    try:
        report = engines.reader.apply_lines([json.dumps({"tenant": TENANT, **c})
                                             for c in SETUP])
        assert not report.rejected, report.rejected
        yield engines
    finally:
        for engine in engines.opened:
            engine.close()


def counted(engine: Engine) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, event in engine.events(TENANT):
        out[type(event).__name__] = out.get(type(event).__name__, 0) + 1
    return out


def together(workers: list[Callable[[], None]]) -> None:
    """Run every worker in its own thread, started at once; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def lead(writer: int, n: int) -> str:
    return json.dumps({"tenant": TENANT, "cmd": "CreateLead", "record": f"w{writer}-{n}",
                       "owner": "mia", "name": f"L{writer}.{n}",
                       "emails": [f"w{writer}n{n}@x.test"]})


def test_e6_concurrent_writers_lose_nothing(stores: Engines) -> None:
    writers, per_writer = 4, 40
    engines = [stores.open() for _ in range(writers)]
    reports = []
    base = datetime.now(UTC)

    def writer(i: int) -> Callable[[], None]:
        engine = engines[i]
        engine.follow = False  # one catch-up at the end, below

        def work() -> None:
            # writer i's clock is i minutes ahead: the others' events are later than theirs
            reports.append(engine.apply_lines([lead(i, n) for n in range(per_writer)],
                                              now=base + timedelta(minutes=i)))
        return work

    together([writer(i) for i in range(writers)])
    total = writers * per_writer
    assert sum(r.applied for r in reports) == total
    assert [r.rejected for r in reports] == [[]] * writers
    reader = stores.reader
    events = counted(reader)
    assert events["LeadCreated"] == total and "CommandRejected" not in events
    records = reader.query_records(TENANT, "ada")
    assert len([r for r in records if r["record"].startswith("w")]) == total


def test_e6_two_sync_workers_on_two_mailboxes_of_one_tenant_lose_nothing(stores: Engines
                                                                         ) -> None:
    per_box, batch = 300, 10
    sources = FakeSources()
    addresses = ["mia@acme.test", "leo@acme.test"]
    skew = [timedelta(0), timedelta(minutes=3)]  # worker 2's clock runs ahead
    workers = []
    for shift in skew:
        engine = stores.open()
        engine.follow = False
        worker = SyncWorker(engine, sources, batch_size=batch,
                            clock=lambda s=shift: datetime.now(UTC) + s)  # type: ignore[misc]
        worker.catch_up()  # first sync of both mailboxes (empty): cursor "0"
        workers.append(worker)
    for address in addresses:
        local = address.split("@")[0]
        sources.box(address).add(*(message(i, thread=f"{local}-t{i // 3}").model_copy(
            update={"id": f"{local}-{i}", "message_id": f"<{local}.{i}@ext.test>"})
            for i in range(per_box)))
    outcomes = []

    def sync(worker: SyncWorker, address: str) -> Callable[[], None]:
        def work() -> None:
            payload = orjson.dumps({"delivery_id": f"gmail:{address}", "subscription": "s",
                                    "email_address": address, "history_id": per_box})
            outcomes.append(worker.handle(Delivery("gmail", f"gmail:{address}", payload, 1)))
        return work

    together([sync(workers[0], addresses[0]), sync(workers[1], addresses[1])])
    assert sorted(o.synced for o in outcomes) == [per_box, per_box]
    reader = stores.reader
    events = counted(reader)
    assert "CommandRejected" not in events
    synced = [e for _, e in reader.events(TENANT) if isinstance(e, ev.MessageSynced)]
    assert sorted({(e.mailbox, e.message.id) for e in synced}) == sorted(
        (f"{a.split('@')[0]}-gmail", f"{a.split('@')[0]}-{i}")
        for a in addresses for i in range(per_box))
    assert len(synced) == 2 * per_box  # each exactly once
    for user in ("mia", "leo"):
        (status,) = reader.query_status(TENANT, "ada", f"{user}-gmail")
        assert (status["synced"], status["rejected"], status["cursor"]) == (
            per_box, 0, str(per_box))
    rows = reader.committed_views().scan("message", TENANT)
    assert sum(len(r) for r in rows.values()) == 2 * per_box


def test_e6_concurrent_http_posts_lose_nothing(stores: Engines) -> None:
    """Two API servers on one store (as two `crmsync serve` processes), callers posting at once
    without `at`; a member's `at` is refused naming `at` and the tenant stays writable."""
    per_caller = 15
    tokens = {u: {"authorization": f"Bearer {issue(SECRET, TENANT, u, False)}"}
              for u in ("mia", "leo", "ada")}
    apps = [create_app(stores.open(), SECRET, max_wait=0.5) for _ in range(2)]
    with Server(apps[0]) as one, Server(apps[1]) as two:
        urls = [one.url, two.url]
        frozen = httpx.post(f"{one.url}/v1/commands", headers=tokens["mia"], json={
            "tenant": TENANT, "cmd": "CreateLead", "record": "frozen", "owner": "mia",
            "name": "F", "emails": ["f@x.test"], "at": "2999-01-01T00:00:00Z"})
        # one rejected JSON command is a 422 naming the field (§8)
        assert frozen.status_code == 422, frozen.text
        assert [e["field"] for e in frozen.json()["errors"]] == ["at"]
        answers: list[dict[str, Any]] = []

        def caller(i: int, user: str) -> Callable[[], None]:
            def work() -> None:
                with httpx.Client(base_url=urls[i % 2], timeout=60) as http:
                    for n in range(per_caller):
                        body = json.loads(lead(i, n)) | {"owner": user}
                        answers.append(http.post("/v1/commands", json=body,
                                                 headers=tokens[user]).json())
            return work

        together([caller(i, u) for i, u in enumerate(("mia", "leo", "mia", "leo"))])
    total = 4 * per_caller
    assert sum(a["applied"] for a in answers) == total
    assert sum(a["rejected"] for a in answers) == 0
    reader = stores.reader
    events = counted(reader)
    assert events["LeadCreated"] == total
    assert events.get("CommandRejected", 0) == 1  # the member's `at`, recorded
    latest = max(e.occurred_at for _, e in reader.events(TENANT))
    assert latest < datetime.now(UTC) + timedelta(minutes=5)  # not frozen in 2999
    records = reader.query_records(TENANT, "ada")
    assert len([r for r in records if r["record"].startswith("w")]) == total
    assert not any(r["record"] == "frozen" for r in records)
