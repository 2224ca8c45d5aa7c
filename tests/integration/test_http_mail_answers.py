"""Issue #13 points 4, 13 and 14 through the HTTP API (a real uvicorn on loopback, SQLite):
the thread answer lists each message's attachments (refused ones marked, S8) and its
Message-ID; reactivating a user whose mailbox is gone answers with a warning (L4); sync status
forgets `mailbox_disconnected` once the mailbox is reconnected and syncs (S10)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback import Server

from adapters.http.api import create_app
from adapters.http.tokens import issue
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

SECRET = b"test-secret-mail-answers-0123456"
JSONL = {"content-type": "application/x-ndjson"}
SERVICE = {"authorization": f"Bearer {issue(SECRET, 'acme', 'sync', True)}"}
ADMIN = {"authorization": f"Bearer {issue(SECRET, 'acme', 'boss', False)}"}
MIA = {"authorization": f"Bearer {issue(SECRET, 'acme', 'mia', False)}"}
SETUP = [
    {"cmd": "AddUser", "user": "boss", "email": "boss@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    engine = Engine.open_sqlite(str(tmp_path / "crmsync.db"))
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answer = post(client, SERVICE, *SETUP)
        assert answer["applied"] == len(SETUP), answer
        yield client
    engine.close()


def post(api: httpx.Client, who: dict[str, str], *commands: dict[str, Any]) -> dict[str, Any]:
    body = "".join(json.dumps({"tenant": "acme", **c}) + "\n" for c in commands)
    response = api.post("/v1/commands", content=body, headers={**who, **JSONL})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get(api: httpx.Client, who: dict[str, str], path: str, position: int) -> Any:
    response = api.get(path, params={"min_position": position}, headers=who)
    assert response.status_code == 200, response.text
    return response.json()


def message(mid: str, **fields: Any) -> dict[str, Any]:
    return {"cmd": "SyncMessage", "mailbox": "mia-gmail", "message": {
        "id": mid, "from": "max@ext.test", "to": ["mia@acme.test"], "subject": "Offer",
        "sent_at": "2026-01-02T10:00:00Z", **fields}}


def test_s8_thread_answer_lists_attachments_refused_ones_marked_and_the_message_id(
        api: httpx.Client) -> None:
    answer = post(api, SERVICE, message("m1", message_id="<m1@ext.test>", thread_id="T",
                                        attachments=[
        {"name": "offer.pdf", "size": 2000, "content_type": "application/pdf"},
        {"name": "tool.exe", "size": 10, "content_type": "application/x-msdownload"},
        {"name": "offer.pdf", "size": 9 << 20, "content_type": "application/pdf"}]),
        message("m2", thread_id="T", sent_at="2026-01-02T11:00:00Z"))
    assert answer["applied"] == 2
    thread = get(api, MIA, "/v1/threads/mia-gmail:T", answer["position"])
    first, second = thread["messages"]
    assert first["message_id"] == "<m1@ext.test>" and second.get("message_id") is None
    listed = first["attachments"]
    assert [(a["name"], a["size"], a.get("refused", False)) for a in listed] == [
        ("offer.pdf", 2000, False), ("tool.exe", 10, True), ("offer.pdf", 9 << 20, True)]
    assert listed[1]["reason"].startswith("type_not_allowed")
    assert listed[2]["reason"].startswith("too_large")
    assert "refused" not in listed[0] and "reason" not in listed[0]
    assert second["attachments"] == []
    status = get(api, MIA, "/v1/mailboxes/mia-gmail/status", answer["position"])
    assert (status["synced"], status["rejected"]) == (2, 2)


def test_l4_reactivating_a_user_whose_mailbox_is_gone_answers_with_a_warning(
        api: httpx.Client) -> None:
    post(api, SERVICE, message("m1", thread_id="T"))
    post(api, ADMIN, {"cmd": "DeactivateUser", "user": "mia"})
    gone = post(api, SERVICE, {"cmd": "ReportMailboxGone", "mailbox": "mia-gmail"})
    assert gone["applied"] == 1, gone
    answer = post(api, ADMIN, {"cmd": "ReactivateUser", "user": "mia"})
    [result] = answer["results"]
    assert result["result"] == "applied"
    [warning] = result["warnings"]
    assert "mia-gmail" in warning and "gone" in warning and "history is kept" in warning
    thread = get(api, MIA, "/v1/threads/mia-gmail:T", answer["position"])
    assert [m["id"] for m in thread["messages"]] == ["m1"]
    plain = post(api, ADMIN, {"cmd": "DeactivateUser", "user": "boss"})
    assert "warnings" not in plain["results"][0]


def test_s10_sync_status_last_error_is_fresh_after_reconnecting(api: httpx.Client) -> None:
    cursor = {"cmd": "AdvanceMailboxCursor", "mailbox": "mia-gmail", "delivery_id": "d"}
    post(api, SERVICE, {**cursor, "cursor": "100"})
    post(api, MIA, {"cmd": "DisconnectMailbox", "mailbox": "mia-gmail"})
    skipped = post(api, SERVICE, {**cursor, "cursor": "200", "delivery_id": "d2"})

    def status(position: int) -> dict[str, Any]:
        row: dict[str, Any] = get(api, MIA, "/v1/mailboxes/mia-gmail/status", position)
        return row

    assert status(skipped["position"])["last_error"] == "mailbox_disconnected"
    post(api, MIA, {"cmd": "ReconnectMailbox", "mailbox": "mia-gmail"})
    synced = post(api, SERVICE, message("m9"), {**cursor, "cursor": "300", "delivery_id": "d3"})
    row = status(synced["position"])
    assert row["last_error"] is None and row["status"] == "connected"
    assert (row["synced"], row["skipped"], row["cursor"]) == (1, 1, "300")
