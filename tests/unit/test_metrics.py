"""Issue #14's metrics on in-memory engines and fakes: each counter moves by what happened (the
deltas are compared with what went in: events stored, commands refused, deliveries posted,
deliveries handled), the store gauges read the views, readiness answers with its reason."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sync_fakes import FakeSources, FakeWorkQueue, message

from adapters.deliveries.model import WebhookDelivery, encode
from adapters.errors import StoreError
from adapters.http.webhooks import webhook_app
from adapters.metrics import prometheus as metrics
from domain import events as ev
from runners.entrypoints.health import EngineView, Probe, add_routes, answer, collector
from runners.entrypoints.sync_loop import LoopOptions, process
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

TENANT, ADDRESS = "acme", "mia@acme.test"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def apply(engine: Engine, *commands: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    return engine.apply_lines([json.dumps({"tenant": TENANT, **c}) for c in commands]).rejected


def appended_by_type(engine: Engine) -> Counter[str]:
    return Counter(type(e).__name__ for _, e in engine.events(TENANT))


def test_events_appended_are_counted_by_type() -> None:
    engine = Engine.open_in_memory()
    types = ("UserAdded", "MailboxConnected", "CommandRejected", "TenantCreated")
    before = {t: sample("crmsync_events_appended_total", type=t) for t in types}
    assert not apply(engine, {"cmd": "AddUser", "user": "root", "email": "r@acme.test",
                              "role": "admin"},
                     {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
                     {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
                      "provider": "gmail", "address": ADDRESS, "backfill_days": 3})
    stored = appended_by_type(engine)
    assert stored  # the log holds what the counter must have seen
    for t in types:
        assert sample("crmsync_events_appended_total", type=t) - before[t] == stored[t]


def test_rejected_commands_are_counted_by_command_and_field_never_by_caller_text() -> None:
    engine = Engine.open_in_memory()
    assert not apply(engine, {"cmd": "AddUser", "user": "root", "email": "r@acme.test",
                              "role": "admin"})
    role = ("AddUser", "role")
    unknown = ("other", "cmd")
    before = {k: sample("crmsync_commands_rejected_total", cmd=k[0], reason=k[1])
              for k in (role, unknown)}
    rejected = apply(engine,
                     {"cmd": "AddUser", "user": "x", "email": "x@acme.test", "role": "king"},
                     {"cmd": "AddUser", "user": "y", "email": "y@acme.test", "role": "emperor"},
                     {"cmd": "Drop table users; --"})
    assert [(cmd, field) for _, cmd, field, _ in rejected][:2] == [role, role]
    assert len(rejected) == 3
    assert sample("crmsync_commands_rejected_total", cmd="AddUser", reason="role") \
        - before[role] == 2
    assert sample("crmsync_commands_rejected_total", cmd="other", reason="cmd") \
        - before[unknown] == 1
    # the caller's text never became a label value
    page = metrics.exposition()[0].decode()
    assert "Drop table" not in page and '"king' not in page


class MemoryInbox:
    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    async def deliver(self, delivery: WebhookDelivery) -> bool:
        return await self.store(delivery.provider, delivery.delivery_id, encode(delivery))

    async def store(self, provider: str, delivery_id: str, payload: bytes) -> bool:
        if delivery_id in self.stored:
            return False
        self.stored[delivery_id] = payload
        return True

    async def close(self) -> None:
        pass


def gmail_push(n: int) -> dict[str, Any]:
    data = json.dumps({"emailAddress": ADDRESS, "historyId": str(n)}).encode()
    return {"message": {"data": base64.b64encode(data).decode(), "messageId": str(n)},
            "subscription": "projects/p/subscriptions/s"}


def test_webhook_deliveries_are_counted_accepted_duplicate_and_malformed() -> None:
    inbox = MemoryInbox()
    app = webhook_app(inbox, lambda _: None)
    add_routes(app, None)
    outcomes = ("accepted", "duplicate", "malformed")
    before = {o: sample("crmsync_webhook_deliveries_total", provider="gmail", outcome=o)
              for o in outcomes}
    route = {"method": "POST", "route": "/webhooks/gmail", "status": "202"}
    timed = sample("crmsync_http_request_duration_seconds_count", **route)

    async def post() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = []
            for body in (gmail_push(1), gmail_push(2), gmail_push(1), {"message": 3}):
                codes.append((await client.post("/webhooks/gmail", json=body)).status_code)
            codes.append((await client.get("/webhooks/nothing/here")).status_code)
            return codes

    assert asyncio.run(post()) == [202, 202, 202, 400, 404]
    delta = {o: sample("crmsync_webhook_deliveries_total", provider="gmail", outcome=o)
             - before[o] for o in outcomes}
    assert delta == {"accepted": len(inbox.stored), "duplicate": 1, "malformed": 1}
    assert sample("crmsync_http_request_duration_seconds_count", **route) - timed == 3
    # a path no route matches is one label, not the path itself
    page = metrics.exposition()[0].decode()
    assert "/webhooks/nothing/here" not in page and 'route="unmatched"' in page


def test_sync_deliveries_latency_provider_errors_and_dead_letters_are_counted() -> None:
    engine = Engine.open_in_memory()
    assert not apply(engine, {"cmd": "AddUser", "user": "mia", "email": ADDRESS,
                              "role": "member"},
                     {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
                      "provider": "gmail", "address": ADDRESS, "backfill_days": 30})
    sources = FakeSources()
    worker = SyncWorker(engine, sources, batch_size=3)
    box = sources.box(ADDRESS)
    box.add(message(1))
    box.failures = 100  # the provider fails until told otherwise
    queue = FakeWorkQueue()
    names = ("crmsync_sync_batches_total", "crmsync_sync_batch_seconds_count")
    before = {o: sample(names[0], provider="gmail", outcome=o) for o in ("retry", "dead", "done")}
    seconds = sample(names[1], provider="gmail")
    errors = sample("crmsync_provider_errors_total", provider="gmail", kind="ProviderError")
    dead = sample("crmsync_dead_letters_total", runner="sync")
    synced = sample("crmsync_events_appended_total", type="MessageSynced")
    options = LoopOptions(max_attempts=2, backoff=0.01)

    async def drive(n: int) -> list[str]:
        results = []
        await queue.publish("gmail", f"gmail:{n}", json.dumps({
            "delivery_id": f"gmail:{n}", "subscription": "s", "email_address": ADDRESS,
            "history_id": n}).encode())
        while queue.items:
            for delivery in await queue.fetch(10, 1.0):
                results.append(await process(worker, queue, delivery, options))
        return results

    outcomes = asyncio.run(drive(1))
    assert outcomes == ["retry", "dead"]
    box.failures = 0
    outcomes += asyncio.run(drive(2))
    assert outcomes == ["retry", "dead", "done"]
    for outcome in ("retry", "dead", "done"):
        assert sample(names[0], provider="gmail", outcome=outcome) - before[outcome] == 1
    assert sample(names[1], provider="gmail") - seconds == len(outcomes)
    assert sample("crmsync_provider_errors_total", provider="gmail", kind="ProviderError") \
        - errors == 2
    assert sample("crmsync_dead_letters_total", runner="sync") - dead == 1
    stored = sum(isinstance(e, ev.MessageSynced) for _, e in engine.events(TENANT))
    assert sample("crmsync_events_appended_total", type="MessageSynced") - synced == stored == 1


def test_provider_throttling_is_counted_apart_from_errors() -> None:
    from adapters.errors import ProviderThrottled

    throttled = sample("crmsync_provider_throttled_total", provider="graph")
    errors = sample("crmsync_provider_errors_total", provider="graph", kind="ProviderThrottled")
    metrics.provider_failed("other", ProviderThrottled("graph", "slow down", 3.0, 429))
    metrics.provider_failed("graph", StoreError("not the provider's"))
    assert sample("crmsync_provider_throttled_total", provider="graph") - throttled == 1
    assert sample("crmsync_provider_errors_total", provider="graph",
                  kind="ProviderThrottled") == errors


def families(collected: Any) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in collected:
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


def connected_engine() -> Engine:
    engine = Engine.open_in_memory()
    engine.follow = False  # views move only when told: the lag shows
    assert not apply(engine, {"cmd": "AddUser", "user": "mia", "email": ADDRESS,
                              "role": "member"},
                     {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
                      "provider": "gmail", "address": ADDRESS, "backfill_days": 30})
    return engine


class SqlView(EngineView):
    """An engine view with the SQL stores' mailbox_states (the memory views have none)."""

    def mailbox_states(self) -> Mapping[tuple[str, bool], int] | None:
        docs = [row for rows in self.engine.committed_views().scan("sync_status", TENANT).values()
                for row in rows.values()]
        return metrics.count_states(docs)


def test_store_gauges_show_the_projection_lag_until_the_views_catch_up() -> None:
    engine = connected_engine()
    head = engine.head()
    seen = families(metrics.StoreCollector(lambda: SqlView(engine)).collect())
    assert seen["crmsync_store_up"] == {(): 1}
    assert seen["crmsync_log_head_position"] == {(): head}
    assert set(seen["crmsync_projection_lag_events"].values()) == {head}
    engine.catch_up()
    seen = families(metrics.StoreCollector(lambda: SqlView(engine), ["thread"]).collect())
    assert seen["crmsync_projection_lag_events"] == {("thread",): 0}
    assert seen["crmsync_mailboxes"] == {("connected", "false"): 1}


def test_store_gauges_report_a_store_that_does_not_answer() -> None:
    def down() -> EngineView:
        raise StoreError("connection refused")

    seen = families(metrics.StoreCollector(down).collect())
    assert seen == {"crmsync_store_up": {(): 0}}


def test_readyz_answers_503_with_the_reason_while_the_views_lag() -> None:
    engine = connected_engine()
    probe = Probe(lambda: engine, max_lag=0, owned=False)
    status, body, _ = answer("/readyz", probe.ready)
    assert status == 503
    assert "events behind the log (more than 0)" in json.loads(body)["reason"]
    engine.catch_up()
    assert answer("/readyz", probe.ready)[0] == 200
    assert answer("/healthz", probe.ready)[0] == 200
    # the embedded engine catches its views up on every query: no lag gate
    lagging = connected_engine()
    assert Probe(lambda: lagging, max_lag=0, gate_lag=False, owned=False).ready() is None


def test_readyz_answers_503_when_the_store_cannot_be_opened() -> None:
    opened: list[int] = []

    def opener() -> Engine:
        opened.append(1)
        raise StoreError("cannot connect to PostgreSQL: connection refused")

    probe = Probe(opener)
    status, body, _ = answer("/readyz", probe.ready)
    assert status == 503
    assert json.loads(body)["reason"].startswith("store unreachable: StoreError: cannot connect")
    assert answer("/readyz", probe.ready)[0] == 503 and len(opened) == 2  # tried again
    seen = families(collector(probe).collect())
    assert seen == {"crmsync_store_up": {(): 0}}


def test_readyz_gives_up_on_a_store_that_does_not_answer() -> None:
    import threading

    release = threading.Event()

    def hangs() -> Engine:
        release.wait(10)
        raise StoreError("late")

    probe = Probe(hangs, timeout=0.2)
    try:
        assert probe.ready() == "store did not answer within 0.2 s"
        assert (probe.ready() or "").startswith("store did not answer within")  # one in flight
    finally:
        release.set()


def test_metrics_page_parses_and_names_every_documented_metric() -> None:
    text = metrics.exposition()[0].decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    doc = Path("docs/operations.md").read_text(encoding="utf-8")
    for name in ("crmsync_events_appended", "crmsync_commands_rejected",
                 "crmsync_webhook_deliveries", "crmsync_sync_batches",
                 "crmsync_sync_batch_seconds", "crmsync_provider_errors",
                 "crmsync_provider_throttled", "crmsync_dead_letters",
                 "crmsync_http_request_duration_seconds"):
        assert name in names
        assert f"`{name}" in doc, name
    for name in ("crmsync_projection_lag_events", "crmsync_projection_position",
                 "crmsync_log_head_position", "crmsync_mailboxes", "crmsync_store_up"):
        assert f"`{name}`" in doc, name


@pytest.fixture(autouse=True)
def _no_multiprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
