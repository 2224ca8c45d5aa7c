"""The webhook receiver through a real uvicorn on loopback, publishing to a real NATS JetStream
(a stream and subject prefix of its own per test, deleted afterwards) or the SQLite inbox."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from fastapi import FastAPI
from loopback import Server
from structlog.testing import capture_logs

from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.http.api import create_app
from adapters.http.webhooks import shared_client_state, webhook_app, webhook_router
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks"
CLIENT_STATE = "s3cret-client-state-value"




class Stream:
    """A JetStream stream of this test only; read back and deleted with a client of our own."""

    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:12]
        self.url, self.name, self.prefix = url, f"T_{tag}", f"t{tag}.webhooks"

    def inbox(self) -> JetStreamInbox:
        return JetStreamInbox(self.url, stream=self.name, subject_prefix=self.prefix)

    def messages(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(subject, Nats-Msg-Id, payload) of every message; [] when the stream was never made."""
        async def read() -> list[tuple[str, str, dict[str, Any]]]:
            nc = await nats.connect(self.url)
            try:
                js = nc.jetstream()
                try:
                    info = await js.stream_info(self.name)
                except nats.js.errors.NotFoundError:
                    return []
                found = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    msg = await js.get_msg(self.name, seq)
                    assert msg.subject is not None and msg.headers is not None
                    found.append((msg.subject, msg.headers["Nats-Msg-Id"],
                                  json.loads(msg.data or b"")))
                return found
            finally:
                await nc.close()

        return asyncio.run(read())

    def delete(self) -> None:
        async def delete() -> None:
            nc = await nats.connect(self.url)
            try:
                await nc.jetstream().delete_stream(self.name)
            except nats.js.errors.NotFoundError:
                pass
            finally:
                await nc.close()

        asyncio.run(delete())


def serve(app: Any) -> Server:
    """The webhook app with lifespan on: the inbox is closed in the server's own loop."""
    return Server(app, lifespan=True)


@pytest.fixture
def stream(nats_url: str) -> Iterator[Stream]:
    created = Stream(nats_url)
    yield created
    created.delete()


@pytest.fixture
def hooks(stream: Stream) -> Iterator[httpx.Client]:
    app = webhook_app(stream.inbox(), shared_client_state(CLIENT_STATE))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def gmail_push(message_id: str = "2070443601311540", history_id: int = 1234567890,
               data: str | None = None) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads((FIXTURES / "gmail-push-envelope.json").read_bytes())
    envelope["message"]["messageId"] = message_id
    if data is None:
        data = base64.b64encode(json.dumps({"emailAddress": "user@example.com",
                                            "historyId": str(history_id)}).encode()).decode()
    envelope["message"]["data"] = data
    return envelope


def change(n: int, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"note-{n}", "subscriptionId": "sub-1",
        "subscriptionExpirationDateTime": "2026-03-19T22:11:09.952Z",
        "clientState": CLIENT_STATE, "changeType": "created",
        "resource": f"users/u-1/messages/m-{n}",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                         "@odata.id": f"Users/u-1/Messages/m-{n}",
                         "@odata.etag": f'W/"etag-{n}"', "id": f"m-{n}"},
    }
    item.update(overrides)
    return item


# -- Gmail ---------------------------------------------------------------------------------------
def test_a_gmail_push_posted_twice_is_published_once(hooks: httpx.Client, stream: Stream) -> None:
    for _ in range(2):
        answer = hooks.post("/webhooks/gmail", json=gmail_push())
        assert answer.status_code == 202, answer.text
    messages = stream.messages()
    assert [(s, i) for s, i, _ in messages] == [(f"{stream.prefix}.gmail",
                                                  "gmail:2070443601311540")]
    payload = messages[0][2]
    assert payload["email_address"] == "user@example.com"
    assert payload["history_id"] == 1234567890
    assert payload["delivery_id"] == "gmail:2070443601311540"


def test_two_gmail_pushes_are_two_messages(hooks: httpx.Client, stream: Stream) -> None:
    assert hooks.post("/webhooks/gmail", json=gmail_push("1", 10)).status_code == 202
    assert hooks.post("/webhooks/gmail", json=gmail_push("2", 11)).status_code == 202
    assert [(i, p["history_id"]) for _, i, p in stream.messages()] == [("gmail:1", 10),
                                                                       ("gmail:2", 11)]


@pytest.mark.parametrize(("body", "field"), [
    (b"", "body"),
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b"\xff\xfe", "body"),
    (json.dumps({"subscription": "s"}).encode(), "message"),
    (json.dumps(gmail_push(data="%%%")).encode(), "message.data"),
    (json.dumps(gmail_push(data=base64.b64encode(b'{"emailAddress": "u@x.test", '
                                                 b'"historyId": "x"}').decode())).encode(),
     "message.data.historyId"),
    (json.dumps(gmail_push(message_id="has space")).encode(), "message.messageId"),
])
def test_malformed_gmail_pushes_are_400_naming_the_field_and_publish_nothing(
        hooks: httpx.Client, stream: Stream, body: bytes, field: str) -> None:
    answer = hooks.post("/webhooks/gmail", content=body,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert answer.json()["detail"].startswith(f"{field}: ")
    assert stream.messages() == []


def test_bodies_over_one_mebibyte_are_413(hooks: httpx.Client, stream: Stream) -> None:
    big = json.dumps({"padding": "x" * (1 << 20)}).encode()
    assert hooks.post("/webhooks/gmail", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(17):
            yield b" " * 65536

    assert hooks.post("/webhooks/graph", content=chunks()).status_code == 413
    assert stream.messages() == []


# -- Graph ---------------------------------------------------------------------------------------
def test_graph_validation_echoes_the_token_as_plain_text(hooks: httpx.Client,
                                                         stream: Stream) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: " \
            "25cf5d75-7a1f-4d5f-bbb8-d5e6a6e1f2f3 a+b/c=d&e"
    answer = hooks.post("/webhooks/graph", params={"validationToken": token},
                        headers={"content-type": "text/plain"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].split(";")[0] == "text/plain"
    assert answer.text == token
    bad = hooks.post("/webhooks/graph", params={"validationToken": "a\x00b"})
    assert bad.status_code == 400 and bad.json()["field"] == "validationToken"
    assert stream.messages() == []


def test_graph_publishes_only_notifications_with_the_right_client_state(
        hooks: httpx.Client, stream: Stream) -> None:
    no_state = change(3)
    del no_state["clientState"]
    batch = {"value": [change(1), change(2, clientState="forged-guess"), no_state,
                       change(4, lifecycleEvent="missed")]}
    del batch["value"][3]["changeType"]
    with capture_logs() as logs:
        answer = hooks.post("/webhooks/graph", json=batch)
        again = hooks.post("/webhooks/graph", json=batch)  # Graph redelivers: no new message
    assert answer.status_code == 202 and again.status_code == 202, answer.text
    messages = stream.messages()
    assert [s.rsplit(".", 1)[1] for s, _, _ in messages] == ["graph", "graph"]
    assert [p["resource_id"] for _, _, p in messages[:1]] == ["m-1"]
    assert messages[1][2]["lifecycle_event"] == "missed"
    assert all(i == p["delivery_id"] and i.startswith("graph:") for _, i, p in messages)
    rejected = [e for e in logs if e["event"] == "webhook_rejected"]
    assert [e["reason"] for e in rejected] == ["clientState mismatch",
                                               "clientState missing"] * 2
    assert all(e["delivery_id"].startswith("graph:") for e in rejected)
    assert "forged-guess" not in repr(logs) and CLIENT_STATE not in repr(logs)


def test_a_batch_rejected_whole_is_still_202_and_publishes_nothing(hooks: httpx.Client,
                                                                   stream: Stream) -> None:
    batch = {"value": [change(1, clientState="forged"), change(2, clientState="forged")]}
    answer = hooks.post("/webhooks/graph", json=batch)
    assert answer.status_code == 202
    assert answer.content == b""  # no oracle for the clientState
    assert stream.messages() == []


@pytest.mark.parametrize(("body", "field"), [
    (b"{}", "value"),
    (json.dumps({"value": []}).encode(), "value"),
    (json.dumps({"value": [change(1), change(2, changeType="moved")]}).encode(),
     "value[1].changeType"),
    (json.dumps({"value": [change(1, resourceData={"x": 1})]}).encode(),
     "value[0].resourceData.id"),
    (b'{"value": [', "body"),
])
def test_malformed_graph_batches_are_400_naming_the_field_and_publish_nothing(
        hooks: httpx.Client, stream: Stream, body: bytes, field: str) -> None:
    answer = hooks.post("/webhooks/graph", content=body,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert stream.messages() == []


def test_without_a_configured_client_state_every_notification_is_rejected(
        stream: Stream) -> None:
    app = webhook_app(stream.inbox(), shared_client_state(None))
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/webhooks/graph", json={"value": [change(1)]}).status_code == 202
    assert stream.messages() == []


def test_an_unreachable_nats_is_503_with_retry_after() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inbox = JetStreamInbox(f"nats://127.0.0.1:{port}", timeout=1)
    with serve(webhook_app(inbox, shared_client_state(CLIENT_STATE))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/webhooks/gmail", json=gmail_push())
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        graph = client.post("/webhooks/graph", json={"value": [change(1)]})
        assert graph.status_code == 503


def test_unknown_routes_and_methods_are_json_errors(hooks: httpx.Client) -> None:
    assert hooks.get("/webhooks/gmail").status_code == 405
    missing = hooks.post("/webhooks/imap", json={})
    assert missing.status_code == 404 and missing.json() == {"detail": "not found"}


# -- the embedded inbox and crmsync serve's combined app ----------------------------------------
def test_without_nats_the_sqlite_inbox_stores_one_row_per_delivery(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.webhooks.db"
    app = webhook_app(SqliteInbox(str(path)), shared_client_state(CLIENT_STATE))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(2):
            assert client.post("/webhooks/gmail", json=gmail_push()).status_code == 202
            batch = {"value": [change(1), change(2), change(3, clientState="forged")]}
            assert client.post("/webhooks/graph", json=batch).status_code == 202
        assert client.post("/webhooks/gmail", content=b"{").status_code == 400
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT provider, delivery_id, status, payload FROM webhook_inbox "
                            "ORDER BY rowid").fetchall()
    assert [(p, s) for p, _, s, _ in rows] == [("gmail", "pending"), ("graph", "pending"),
                                               ("graph", "pending")]
    assert rows[0][1] == "gmail:2070443601311540"
    assert [json.loads(r[3])["resource_id"] for r in rows[1:]] == ["m-1", "m-2"]


def test_serve_answers_webhooks_beside_the_query_api(tmp_path: Path) -> None:
    engine = Engine.open_sqlite(str(tmp_path / "crmsync.db"))
    app: FastAPI = create_app(engine, b"test-secret-0123456789abcdef")
    app.include_router(webhook_router(SqliteInbox(str(tmp_path / "crmsync.webhooks.db")),
                                      shared_client_state(CLIENT_STATE)))
    try:
        with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            answer = client.post("/webhooks/gmail", json=gmail_push())  # no token needed
            assert answer.status_code == 202 and "x-request-id" in answer.headers
            assert client.get("/v1/mailbox").status_code == 401  # the API still needs one
            assert client.post("/webhooks/gmail", content=b"[]").status_code == 400
    finally:
        engine.close()


def test_no_input_answers_500(tmp_path: Path) -> None:
    """Random bytes, JSON and near-valid payloads: 202 or 400, never a server error."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                    max_size=4), max_leaves=12)
    near_gmail = st.builds(lambda m, d: {"subscription": "s", "message": {"messageId": m,
                                                                          "data": d}},
                           json_values, json_values)
    near_graph = st.builds(lambda items: {"value": items},
                           st.lists(st.builds(lambda k, v: change(1, **{k: v}),
                                              st.sampled_from(["changeType", "resource",
                                                               "resourceData", "clientState",
                                                               "subscriptionId", "id",
                                                               "lifecycleEvent"]),
                                              json_values), max_size=3))
    bodies = (st.binary(max_size=200)
              | json_values.map(lambda v: json.dumps(v).encode())
              | near_gmail.map(lambda v: json.dumps(v).encode())
              | near_graph.map(lambda v: json.dumps(v).encode()))
    app = webhook_app(SqliteInbox(str(tmp_path / "fuzz.db")), shared_client_state(CLIENT_STATE))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:

        @settings(max_examples=150, deadline=None)
        @given(path=st.sampled_from(["/webhooks/gmail", "/webhooks/graph"]), body=bodies)
        def check(path: str, body: bytes) -> None:
            answer = client.post(path, content=body)
            assert answer.status_code in (202, 400), (answer.status_code, answer.text)
            if answer.status_code == 400:
                assert answer.json()["field"]

        check()
