"""E3 with the outbox's events: the views written incrementally equal a rebuild, and answers show
the delivery status, read flag and deletion at once."""

from __future__ import annotations

from typing import Any

import orjson

from runners.services.engine import Engine

ADDRESS = "ann@acme.test"
STEPS: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ann", "email": ADDRESS, "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "ann", "provider": "gmail",
     "address": ADDRESS},
    {"cmd": "CreateContact", "record": "c1", "owner": "ann", "name": "Carla", "kind": "person",
     "emails": ["carla@customer.test"]},
    {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "p-1", "message_id": "<p1@customer.test>", "thread_id": "t1",
        "from": "carla@customer.test", "to": [ADDRESS], "subject": "Hi",
        "sent_at": "2026-01-05T09:00:00Z"}},
    {"cmd": "SendEmail", "user": "ann", "mailbox": "mb", "kind": "single",
     "to": ["carla@customer.test"], "subject": "Offer", "body": "Hello", "thread": "mb:t1"},
    {"cmd": "SendEmail", "user": "ann", "mailbox": "mb", "kind": "single",
     "to": ["carla@customer.test"], "subject": "Second", "body": "Again"},
]


def run(engine: Engine, *commands: dict[str, Any]) -> None:
    report = engine.apply_lines([orjson.dumps({"tenant": "acme", "at": f"2026-01-05T10:0{i}:00Z",
                                               **c}) for i, c in enumerate(commands)])
    assert not report.rejected, report.rejected


def test_e3_outbox_events_rebuild_equals_incremental_and_answers_follow() -> None:
    engine = Engine.open_in_memory()
    for step in STEPS:
        run(engine, step)
    state = engine.state("acme")
    first, second = sorted(mid for (_, mid) in state.sent_provider_ids)
    run(engine,
        {"cmd": "AcknowledgeOutboundMail", "mailbox": "mb", "request": first,
         "provider_id": "g-1", "provider_thread_id": "t1"},
        {"cmd": "AcknowledgeOutboundMail", "mailbox": "mb", "request": second, "ok": False,
         "error": "550 no such user", "attempts": 5},
        {"cmd": "SyncMessage", "mailbox": "mb", "message": {
            "id": "g-1", "thread_id": "t1", "from": ADDRESS, "to": ["carla@customer.test"],
            "subject": "Offer", "sent_at": "2026-01-05T10:00:00Z", "labels": ["SENT"]}},
        {"cmd": "MarkMessageRead", "user": "ann", "mailbox": "mb", "id": "p-1"},
        {"cmd": "DeleteMessage", "user": "ann", "mailbox": "mb", "id": first})
    thread = engine.query_thread("acme", "ann", "mb:t1")
    assert [(m["id"], m["read"]) for m in thread["messages"]] == [("p-1", True)]
    crm = engine.query_thread("acme", "ann", state.messages[("mb", second)].thread)
    assert [m["delivery_status"] for m in crm["messages"]] == ["failed"]
    results = engine.verify()
    assert all(live == rebuilt for live, rebuilt in results.values()), results
