"""Push channels end to end (issue #4), embedded mode (SQLite, no NATS): `crmsync run webhooks`
and `crmsync run sync --public-url` as processes against a local Microsoft Graph over TLS.

The worker creates the mailbox's Graph subscription on its tick — Graph's validation handshake
reaches the real receiver — and records it; Graph then removes the subscription and says so
with a `subscriptionRemoved` lifecycle notification (naming only the subscription id): the
worker records the end, creates a new subscription and catches up on the mail that arrived
meanwhile. A change notification naming the user by id, not address, is routed by its
subscription id."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from graph_fake import FakeGraph, make_certificate
from processes import Processes, embedded_env, free_port, wait_until

from domain import events as ev

pytestmark = pytest.mark.e2e

ADDRESS = "mia@acme.test"
CLIENT_STATE = "e2e-client-state-0123456789"


def test_graph_subscription_is_created_and_recreated_after_subscription_removed(
        tmp_path: Path) -> None:
    db = str(tmp_path / "crm.db")
    cert, key = make_certificate(tmp_path)
    graph = FakeGraph(ADDRESS, cert, key)
    hooks_port = free_port()
    env = embedded_env(db, CRMSYNC_GRAPH_API_URL=graph.url, CRMSYNC_GRAPH_CA_FILE=str(cert),
                       CRMSYNC_GRAPH_CLIENT_STATE=CLIENT_STATE,
                       CRMSYNC_CREDENTIALS_KEY=base64.b64encode(os.urandom(32)).decode())
    processes = Processes(tmp_path, db, env)
    start = processes.start

    def tenant_events() -> list[ev.DomainEvent]:
        return processes.events("acme")

    def of(cls: type[Any]) -> list[Any]:
        return [e for e in tenant_events() if isinstance(e, cls)]

    def synced() -> set[str]:
        return {e.message.id for e in of(ev.MessageSynced)}

    def notify(item: dict[str, Any]) -> None:
        answer = httpx.post(f"http://127.0.0.1:{hooks_port}/webhooks/graph", timeout=10,
                            json={"value": [{"clientState": CLIENT_STATE,
                                             "tenantId": "t-1", **item}]})
        assert answer.status_code == 202, answer.text

    try:
        first = graph.add(3, minutes_ago=30)
        commands = [
            {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "mia-outlook", "user": "mia",
             "provider": "outlook", "address": ADDRESS,
             "credentials": {"access_token": "eyJ0-e2e-graph-token"}}]
        (tmp_path / "setup.jsonl").write_text(
            "\n".join(json.dumps({"tenant": "acme", **c}) for c in commands))
        applied = processes.cli("apply", str(tmp_path / "setup.jsonl"))
        assert applied.returncode == 0, applied.stderr
        start("webhooks", "run", "webhooks", "--port", str(hooks_port))
        start("sync", "run", "sync", "--poll", "0.2", "--push-interval", "0.5",
              "--public-url", f"http://127.0.0.1:{hooks_port}")

        # 1. first sync, then a subscription whose handshake reached the receiver
        wait_until(lambda: synced() >= set(first), 60, "first sync")
        wait_until(lambda: of(ev.PushSubscriptionCreated), 60, "subscription created")
        (created,) = of(ev.PushSubscriptionCreated)
        assert (created.subscription_id, created.reason) == ("sub-1", "missing")
        assert created.resource == f"/users/{ADDRESS}/messages"
        assert graph.validated == [f"http://127.0.0.1:{hooks_port}/webhooks/graph"]
        assert graph.subscriptions["sub-1"]["clientState"] == CLIENT_STATE

        # 2. Graph removes it; mail arrives meanwhile; the lifecycle notification says so
        graph.subscriptions.pop("sub-1")
        later = graph.add(2)
        notify({"subscriptionId": "sub-1", "lifecycleEvent": "subscriptionRemoved",
                "subscriptionExpirationDateTime": "2026-03-04T11:00:00Z"})
        wait_until(lambda: len(of(ev.PushSubscriptionCreated)) == 2, 30, "new subscription")
        wait_until(lambda: synced() >= set(later), 30, "catch-up after the removal")
        (ended,) = of(ev.PushSubscriptionEnded)
        assert (ended.subscription_id, ended.reason) == ("sub-1", "removed_by_provider")
        newest = of(ev.PushSubscriptionCreated)[-1]
        assert (newest.subscription_id, newest.reason) == ("sub-2", "subscription_removed")
        assert set(graph.subscriptions) == {"sub-2"}

        # 3. a change notification naming the user by id is routed by its subscription id
        arrived = graph.add(1)
        notify({"subscriptionId": "sub-2", "changeType": "created",
                "resource": "Users/6f1a9c7e-guid/Messages/AAMk-x",
                "resourceData": {"id": "AAMk-x", "@odata.type": "#Microsoft.Graph.Message"}})
        wait_until(lambda: set(arrived) <= synced(), 30, "change routed by subscription id")

        # 4. an unknown subscription's lifecycle notification is acknowledged and logged
        notify({"subscriptionId": "sub-unknown", "lifecycleEvent": "missed"})
        wait_until(lambda: "delivery_unknown_subscription" in
                   (tmp_path / "sync.log").read_text(errors="replace"), 30, "unknown logged")
        sync_log = (tmp_path / "sync.log").read_text(errors="replace")
        assert "Traceback" not in sync_log
        assert CLIENT_STATE not in sync_log and "eyJ0-e2e-graph-token" not in sync_log
        events = b"".join(e.model_dump_json().encode() for e in tenant_events())
        assert CLIENT_STATE.encode() not in events
    finally:
        processes.stop_all()
        graph.close()
