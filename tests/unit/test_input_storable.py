"""E8: input that cannot be stored faithfully is refused at the boundary, with the field named
(nested fields by path), however the command was built."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from sync_fakes import FakeSources, message

from domain import commands as c
from domain import events as ev
from domain.errors import Rejection
from runners.services.engine import Engine
from runners.services.mail_directory import MailboxRef
from runners.services.sync_worker import SyncWorker

T = "acme"
MSG = {"id": "m1", "from": "a@x.test", "to": ["b@x.test"], "subject": "hi", "body": "text",
       "sent_at": "2026-01-01T00:00:00Z"}


def refused(raw: dict[str, Any]) -> Rejection:
    with pytest.raises(Rejection) as caught:
        c.parse_command({"tenant": T, **raw})
    return caught.value


def lead(**fields: Any) -> dict[str, Any]:
    return {"cmd": "CreateLead", "record": "lead-1", "owner": "max", "name": "Lead",
            "emails": ["l@x.test"], **fields}


@pytest.mark.parametrize(("raw", "field"), [
    (lead(record="x\x00y"), "record"),
    (lead(owner="max\x00"), "owner"),
    (lead(name="a\x01b"), "name"),
    (lead(emails=["ok@x.test", "b\x00@x.test"]), "emails.1"),
    ({"cmd": "AddUser", "user": "u\x00", "email": "u@x.test", "role": "member"}, "user"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "subject": "s\x00"}},
     "message.subject"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "body": "a\x00b"}},
     "message.body"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "to": ["b@x", "c\x00"]}},
     "message.to.1"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "from": "a\x00@x"}},
     "message.from"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "labels": ["IN\x00BOX"]}},
     "message.labels.0"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "attachments": [
        {"name": "a\x00.pdf", "size": 1, "content_type": "application/pdf"}]}},
     "message.attachments.0.name"),
    ({"cmd": "UpdateContact", "record": "c-1", "fields": {"notes": "ok", "x": {"y": "\x00"}}},
     "fields.x.y"),
    ({"cmd": "LinkThread", "user": "max", "thread": "mb:t\x001", "record": "lead-1"}, "thread"),
    ({"cmd": "SendEmail", "user": "max", "mailbox": "mb", "kind": "single", "to": ["a@x"],
      "subject": "s", "body": "a\x00"}, "body"),
])
def test_e8_nul_and_control_characters_refused_with_the_field_named(raw: dict[str, Any],
                                                                   field: str) -> None:
    rejection = refused(raw)
    assert rejection.field == field
    assert "NUL" in rejection.reason or "control character" in rejection.reason
    assert "\x00" not in rejection.reason


def test_e8_tab_and_newlines_allowed_in_bodies_and_subjects_not_in_ids() -> None:
    text = {**MSG, "subject": "a\tb", "body": "line 1\r\nline 2\n\tindented"}
    command = c.parse_command({"tenant": T, "cmd": "SyncMessage", "mailbox": "mb",
                               "message": text})
    assert isinstance(command, c.SyncMessage)
    assert command.message.body == "line 1\r\nline 2\n\tindented"
    assert refused({"cmd": "SyncMessage", "mailbox": "mb",
                    "message": {**MSG, "id": "m\n1"}}).field == "message.id"
    assert refused(lead(name="two\nlines")).field == "name"
    assert refused({"cmd": "SyncMessage", "mailbox": "mb",
                    "message": {**MSG, "body": "form\x0cfeed"}}).field == "message.body"


@pytest.mark.parametrize(("raw", "field"), [
    (lead(record="r" * 257), "record"),
    ({"cmd": "AddUser", "user": "u" * 257, "email": "u@x.test", "role": "member"}, "user"),
    ({"cmd": "SyncMessage", "mailbox": "mb",
      "message": {**MSG, "body": "x" * (4 * 1024 * 1024 + 1)}}, "message.body"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "subject": "s" * 10_001}},
     "message.subject"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "to": ["a@x"] * 10_001}},
     "message.to"),
    ({"cmd": "DeleteMessagesAtProvider", "mailbox": "mb", "ids": ["m"] * 100_001}, "ids"),
    ({"cmd": "UpdateContact", "record": "c-1", "fields": {f"k{i}": i for i in range(1001)}},
     "fields"),
    ({"cmd": "SyncMessage", "mailbox": "mb", "message": {**MSG, "attachments": [
        {"name": "a", "size": 2**60, "content_type": "x/y"}]}}, "message.attachments.0.size"),
    ({"cmd": "ConnectMailbox", "mailbox": "mb", "user": "max", "provider": "gmail",
      "address": "a@x.test", "backfill_days": 10**9}, "backfill_days"),
])
def test_e8_absurd_sizes_refused_with_the_field_named(raw: dict[str, Any], field: str) -> None:
    assert refused(raw).field == field


def test_e8_bounds_a_crm_admin_accepts_pass() -> None:
    body = "x" * (4 * 1024 * 1024)
    command = c.parse_command({"tenant": T, "cmd": "SyncMessage", "mailbox": "mb", "message": {
        **MSG, "id": "A" * 200, "body": body, "to": [f"u{i}@x.test" for i in range(5000)],
        "references": [f"<r{i}@x.test>" for i in range(500)]}})
    assert isinstance(command, c.SyncMessage) and len(command.message.body) == len(body)
    assert c.parse_command({"tenant": T, **lead(record="r" * 256)}).cmd == "CreateLead"


def test_e8_lone_surrogates_refused_from_json_and_from_python() -> None:
    assert refused(lead(record="x\ud800")).field == "(command)"  # cannot even be JSON
    with pytest.raises(Rejection):
        c.parse_command(b'{"cmd":"CreateLead","tenant":"acme","record":"\\ud800"}')
    with pytest.raises(ValidationError) as caught:
        c.CreateLead.model_validate({"tenant": T, **lead(name="a\udc80")})
    assert c.describe(caught.value) == ("name", "not valid Unicode (a lone surrogate)")


def test_e8_a_rejection_never_echoes_unstorable_input() -> None:
    rejection = refused({"cmd": "Create\x00Lead"})
    assert (rejection.cmd, rejection.field) == ("?", "cmd")
    key = refused({"cmd": "UpdateContact", "record": "c-1", "fields": {"a\x00b": "x"}})
    assert key.field == "fields" and "\x00" not in key.reason


def test_e8_rejected_over_the_cli_path_and_nothing_stored() -> None:
    engine = Engine.open_in_memory()
    lines = [{"cmd": "AddUser", "user": "max", "email": "max@x.test", "role": "admin"},
             lead(record="x\x00y")]
    report = engine.apply_lines([json.dumps({"tenant": T, **x}) for x in lines])
    assert report.applied == 1
    assert [(r[1], r[2]) for r in report.rejected] == [("CreateLead", "record")]
    assert not [e for _, e in engine.events(T) if isinstance(e, ev.LeadCreated)]


def test_e8_a_provider_message_with_nul_is_skipped_and_the_batch_goes_on() -> None:
    engine = Engine.open_in_memory()
    setup = [{"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
             {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
              "provider": "gmail", "address": "mia@acme.test", "backfill_days": 30}]
    assert not engine.apply_lines([json.dumps({"tenant": T, **x}) for x in setup]).rejected
    sources = FakeSources()
    bad = message(2).model_copy(update={"subject": "bad\x00subject"})
    sources.box("mia@acme.test").add(message(1), bad, message(3))
    worker = SyncWorker(engine, sources, batch_size=10)
    outcome = worker.sync_mailbox(MailboxRef(T, "mia-gmail"), None)
    synced = [e.message.id for _, e in engine.events(T)
              if isinstance(e, ev.MessageSynced)]
    assert sorted(synced) == ["m1", "m3"]
    assert outcome.synced == 2
    assert engine.state(T).mailboxes["mia-gmail"].cursor is not None


def test_e8_service_diagnostics_are_cleaned_not_refused() -> None:
    """A dead letter's or an acknowledgement's `error` quotes an exception, which may hold
    anything: its refused characters become U+FFFD so the record is never lost."""
    dead = c.parse_command({"tenant": T, "cmd": "RecordDeadLetter", "dead_letter_id": "d1",
                            "provider": "imap", "delivery_id": "x", "attempts": 5,
                            "error": "IMAP said \x00\x1b[1m no\nmore"})
    assert isinstance(dead, c.RecordDeadLetter)
    assert dead.error == "IMAP said \ufffd\ufffd[1m no\nmore"
    ack = c.parse_command({"tenant": T, "cmd": "AcknowledgeOutboundMail", "mailbox": "mb",
                           "request": "crm-1", "ok": False, "error": "\x07bell"})
    assert isinstance(ack, c.AcknowledgeOutboundMail) and ack.error == "\ufffdbell"
