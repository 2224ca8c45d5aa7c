"""Issue #10 point 11 through real HTTP (uvicorn on loopback, SQLite inbox): absurd numbers in
webhook bodies are a 400 naming the field, never a 500; the Graph validation echo cannot be
sniffed into HTML."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback import Server

from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.http.webhooks import shared_client_state, webhook_app

pytestmark = pytest.mark.integration

STATE = "client-state-of-the-hardening-test"
LONG = "9" * 5000


def gmail_text(history_id: str = '"1234"', **envelope: str) -> str:
    """A Pub/Sub push as JSON text; values are JSON tokens, put in verbatim."""
    data = '{"emailAddress": "mia@acme.test", "historyId": ' + history_id + "}"
    fields = {"messageId": '"m-1"', "publishTime": '"2026-12-05T00:00:00Z"'}
    fields.update(envelope)
    message = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    encoded = base64.b64encode(data.encode()).decode()
    return ('{"subscription": "projects/p/subscriptions/s", "message": {' + message
            + ', "data": "' + encoded + '"}}')


def graph_text(**item: str) -> str:
    """A Graph change notification as JSON text; values are JSON tokens, put in verbatim."""
    fields = {"subscriptionId": '"sub-1"', "clientState": json.dumps(STATE),
              "changeType": '"created"', "resource": '"Users/u/Messages/m-1"',
              "subscriptionExpirationDateTime": '"2026-12-07T00:00:00Z"',
              "resourceData": '{"id": "m-1"}'}
    fields.update(item)
    return '{"value": [{' + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}]}"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    app = webhook_app(SqliteInbox(str(tmp_path / "inbox.db")), shared_client_state(STATE))
    with Server(app, lifespan=True) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "inbox.db") as conn:
        count: int = conn.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0]
    return count


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/webhooks/gmail", gmail_text(LONG), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text(json.dumps(LONG)), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text("-" + LONG), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text("1e999"), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text("-1"), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text("18446744073709551616"), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text("NaN"), "message.data.historyId"),
    ("/webhooks/gmail", gmail_text(messageId=LONG), "message.messageId"),
    ("/webhooks/gmail", gmail_text(publishTime=LONG), "message.publishTime"),
    ("/webhooks/gmail", gmail_text(publishTime='"0001-01-01T00:00:00+01:00"'),
     "message.publishTime"),
    ("/webhooks/graph", graph_text(subscriptionExpirationDateTime=LONG),
     "value[0].subscriptionExpirationDateTime"),
    ("/webhooks/graph", graph_text(subscriptionExpirationDateTime="-1e999"),
     "value[0].subscriptionExpirationDateTime"),
    ("/webhooks/graph", graph_text(subscriptionExpirationDateTime='"9999-12-31T23:59:59-01:00"'),
     "value[0].subscriptionExpirationDateTime"),
    ("/webhooks/graph", graph_text(subscriptionId=LONG), "value[0].subscriptionId"),
    ("/webhooks/graph", graph_text(resourceData='{"id": ' + LONG + "}"),
     "value[0].resourceData.id"),
])
def test_absurd_numbers_are_400_naming_the_field(client: httpx.Client, tmp_path: Path,
                                                 path: str, body: str, field: str) -> None:
    answer = client.post(path, content=body.encode(),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert rows(tmp_path) == 0


def test_the_graph_validation_echo_is_plain_text_that_is_never_sniffed(
        client: httpx.Client) -> None:
    answer = client.post("/webhooks/graph", params={"validationToken": "<html>hi</html>"})
    assert answer.status_code == 200 and answer.text == "<html>hi</html>"
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["x-content-type-options"] == "nosniff"


_digits = st.integers(1, 6000).map(lambda n: "9" * n)
NUMBERS = st.one_of(
    _digits, _digits.map(lambda d: "-" + d), _digits.map(lambda d: d + ".5"),
    _digits.map(lambda d: "1e" + d[:7]), _digits.map(lambda d: "-0." + d + "e-" + d[:5]),
    _digits.map(json.dumps),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0",
                     "18446744073709551616", "18446744073709551615", "-1", "1.5", "true"]),
    st.integers().map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=30).map(json.dumps))
GMAIL_FIELDS = ["historyId", "messageId", "publishTime"]
GRAPH_FIELDS = ["subscriptionExpirationDateTime", "subscriptionId", "changeType", "resource",
                "resourceData", "clientState", "tenantId", "lifecycleEvent", "id"]


def test_no_number_in_any_webhook_field_makes_a_5xx(client: httpx.Client) -> None:
    @settings(max_examples=300, deadline=None)
    @given(data=st.data(), number=NUMBERS)
    def check(data: Any, number: str) -> None:
        if data.draw(st.booleans()):
            field = data.draw(st.sampled_from(GMAIL_FIELDS))
            path = "/webhooks/gmail"
            body = gmail_text(number) if field == "historyId" else gmail_text(**{field: number})
        else:
            field = data.draw(st.sampled_from(GRAPH_FIELDS))
            path, body = "/webhooks/graph", graph_text(**{field: number})
        answer = client.post(path, content=body.encode())
        assert answer.status_code in (202, 400), (field, number[:50], answer.status_code)
        if answer.status_code == 400:
            assert answer.json()["field"]

    check()
