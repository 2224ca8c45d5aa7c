"""Export (SPEC §7, L2): every event of the tenant once, in order, paged; content — subjects,
bodies, attachment names — only on request."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from histories import T0, history

from adapters.eventstore.scan import scan_tenant
from runners.services.engine import Engine
from runners.services.export import event_line, export_lines, strip_content

SECRET_WORDS = ("Quarterly numbers", "the figures are", "budget-2026.pdf", "virus.exe")
STORY: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "ada", "provider": "gmail",
     "address": "ada@acme.test"},
    {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "m1", "thread_id": "t1", "from": "o@x.test", "to": ["ada@acme.test"],
        "subject": "Quarterly numbers", "body": "the figures are attached",
        "sent_at": "2026-02-01T08:00:00Z", "attachments": [
            {"name": "budget-2026.pdf", "size": 1200, "content_type": "application/pdf"},
            {"name": "virus.exe", "size": 10, "content_type": "application/x-msdownload"}]}},
]


def _engine(commands: list[dict[str, Any]]) -> Engine:
    engine = Engine.open_in_memory()
    lines = [json.dumps({"tenant": "acme", "at": (T0 + timedelta(minutes=i)).isoformat(), **c})
             for i, c in enumerate(commands)]
    engine.apply_lines(lines, now=T0 + timedelta(minutes=len(commands)))
    return engine


def test_l2_export_without_content_has_no_subject_body_or_attachment_name() -> None:
    engine = _engine(STORY)
    text = b"".join(export_lines(engine, "acme")).decode()
    assert not [w for w in SECRET_WORDS if w in text]
    lines = [json.loads(line) for line in text.splitlines()]
    types = [e["type"] for e in lines]
    assert "MessageSynced" in types
    assert "o@x.test" in text and "application/pdf" in text  # metadata stays
    rejected = next(e for e in lines if e["type"] == "AttachmentRejected")
    assert rejected["payload"]["reason"].startswith("type_not_allowed")
    full = b"".join(export_lines(engine, "acme", with_content=True)).decode()
    assert [w for w in SECRET_WORDS if w in full] == list(SECRET_WORDS)


def test_strip_content_nulls_content_fields_at_any_depth() -> None:
    payload = {"message": {"subject": "s", "body": "b", "attachments": [{"name": "n", "size": 1}],
                           "to": ["a@x.test"]}, "snippets": ["x"], "nested": [{"snippet": "y"}]}
    assert strip_content(payload) == {
        "message": {"subject": None, "body": None, "attachments": [{"name": None, "size": 1}],
                    "to": ["a@x.test"]}, "snippets": None, "nested": [{"snippet": None}]}


def test_export_pages_through_the_stream_and_keeps_every_event_once_in_order() -> None:
    engine = _engine(history(3, length=80))
    whole = list(scan_tenant(engine.stores().events, "acme"))
    paged = list(scan_tenant(engine.stores().events, "acme", page=7))
    assert [seq for seq, _ in paged] == list(range(1, len(whole) + 1))
    assert paged == whole
    lines = [json.loads(x) for x in export_lines(engine, "acme")]
    assert [x["position"] for x in lines] == [seq for seq, _ in whole]
    assert lines[0] == event_line(1, whole[0][1], False) | {
        "occurred_at": whole[0][1].occurred_at.isoformat()}


def test_export_window_is_inclusive_on_domain_time() -> None:
    engine = _engine(history(3, length=40))
    since, until = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    lines = [json.loads(x) for x in export_lines(engine, "acme", since, until)]
    times = [x["occurred_at"] for x in lines]
    assert times and min(times) >= since.isoformat() and max(times) <= until.isoformat()
    every = [json.loads(x) for x in export_lines(engine, "acme")]
    assert len(lines) == sum(since.isoformat() <= x["occurred_at"] <= until.isoformat()
                             for x in every)
