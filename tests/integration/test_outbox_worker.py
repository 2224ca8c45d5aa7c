"""The outbox worker on a real embedded engine (SQLite) with the fake provider (S7, S12):
retry until acknowledged, failure after the maximum attempts, no double send after a crash
between the provider's acceptance and the recorded ack, deletions and read flags executed at the
provider, and the durable watermark."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from adapters.errors import MailboxGone, ProviderError
from adapters.providers.outbound import MemoryOutbound, OutboundClient
from adapters.tracking.outbox_sqlite import SqliteOutboxTracking
from domain import events as ev
from domain.state import Mailbox
from runners.services.engine import Engine
from runners.services.outbox import Outbox

pytestmark = pytest.mark.integration

ADDRESS = "ann@acme.test"
SETUP = [
    {"cmd": "AddUser", "user": "ann", "email": ADDRESS, "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mb-ann", "user": "ann", "provider": "gmail",
     "address": ADDRESS},
]
SEND = {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
        "to": ["carla@customer.test"], "subject": "Offer", "body": "Hello Carla"}


def apply(engine: Engine, *commands: dict[str, Any]) -> None:
    report = engine.apply_lines([orjson.dumps({"tenant": "acme", **c}) for c in commands],
                                now=datetime.now(UTC))  # the worker's acks take the clock too
    assert not report.rejected, report.rejected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "crmsync.db")


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    opened = Engine.open_sqlite(db)
    apply(opened, *SETUP)
    yield opened
    opened.close()


def outbox(engine: Engine, db: str, fake: MemoryOutbound, clock: Clock | None = None,
           **options: Any) -> Outbox:
    def clients(tenant: str, mbx: Mailbox, credentials: dict[str, Any] | None) -> OutboundClient:
        assert mbx.address == ADDRESS
        return fake

    return Outbox(engine, SqliteOutboxTracking(db), clients, clock=clock or Clock(),
                  backoff=1.0, **options)


def sent_message(engine: Engine) -> tuple[str, str | None, str | None]:
    """(crm id, delivery status, provider id) of the one CRM-sent message."""
    state = engine.state("acme")
    (mailbox, mid), provider_id = next(iter(state.sent_provider_ids.items()))
    return mid, state.messages[(mailbox, mid)].delivery_status, provider_id


def acks(engine: Engine) -> list[ev.OutboundMailAcknowledged]:
    return [e for _, e in engine.events("acme")
            if isinstance(e, ev.OutboundMailAcknowledged)]


def test_s7_send_is_executed_acknowledged_and_shown_as_sent(engine: Engine, db: str) -> None:
    fake = MemoryOutbound()
    apply(engine, SEND)
    worker = outbox(engine, db, fake)
    assert worker.round() == 1
    mid, status, provider_id = sent_message(engine)
    assert fake.sends == [(ADDRESS, f"<{mid}.acme@crmsync.invalid>")]
    assert (status, provider_id) == ("sent", "mem-1")
    thread = engine.state("acme").messages[("mb-ann", mid)].thread
    answer = engine.query_thread("acme", "ann", thread)
    assert [m["delivery_status"] for m in answer["messages"]] == ["sent"]
    assert worker.tracking.position() == engine.head()
    assert worker.round() == 0 and len(fake.sends) == 1


def test_s7_retries_with_backoff_until_the_provider_acknowledges(engine: Engine, db: str) -> None:
    fake = MemoryOutbound(failures=[ProviderError("gmail", "503 busy", 503),
                                    ProviderError("gmail", "GET x: ConnectError")])
    clock = Clock()
    apply(engine, SEND)
    worker = outbox(engine, db, fake, clock)
    assert worker.round() == 1 and acks(engine) == []
    assert worker.round() == 0  # backing off: not due yet
    clock.now += 1.0
    assert worker.round() == 1 and acks(engine) == []
    clock.now += 1.5
    assert worker.round() == 0  # the second wait is 2 s
    clock.now += 1.0
    assert worker.round() == 1
    [ack] = acks(engine)
    assert ack.ok and ack.attempts == 3 and ack.provider_id == "mem-1"
    assert sent_message(engine)[1] == "sent"
    assert len(fake.sends) == 1


def test_s7_fails_after_the_maximum_attempts(engine: Engine, db: str) -> None:
    fake = MemoryOutbound(failures=[ProviderError("gmail", f"503 try {i}", 503)
                                    for i in range(10)])
    clock = Clock()
    apply(engine, SEND)
    worker = outbox(engine, db, fake, clock, max_attempts=3)
    for _ in range(3):
        worker.round()
        clock.now += 100
    [ack] = acks(engine)
    assert not ack.ok and ack.attempts == 3 and "503 try 2" in (ack.error or "")
    assert sent_message(engine)[1] == "failed"
    assert fake.sends == []
    status = engine.query_status("acme", "ann", "mb-ann")
    assert "503 try 2" in str(status)


def test_s7_mailbox_gone_fails_at_once(engine: Engine, db: str) -> None:
    fake = MemoryOutbound(failures=[MailboxGone("gmail", "users.getProfile: 404", 404)])
    apply(engine, SEND)
    outbox(engine, db, fake).round()
    [ack] = acks(engine)
    assert not ack.ok and ack.attempts == 1 and "mailbox gone" in (ack.error or "")


class Crash(Exception):
    pass


class CrashOnAck:
    """The engine, except that recording the ack dies (the process is killed after the provider
    accepted the message and before the ack is in the log)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def execute(self, command: Any, **kwargs: Any) -> Any:
        if command.cmd == "AcknowledgeOutboundMail":
            raise Crash
        return self._engine.execute(command, **kwargs)


def test_s7_crash_between_send_and_ack_does_not_send_twice(engine: Engine, db: str) -> None:
    fake = MemoryOutbound()
    apply(engine, SEND)
    dying = Outbox(cast(Engine, CrashOnAck(engine)), SqliteOutboxTracking(db),
                   lambda tenant, mbx, creds: fake, clock=Clock())
    with pytest.raises(Crash):
        dying.round()
    assert len(fake.sends) == 1 and acks(engine) == []
    engine.close()
    restarted = Engine.open_sqlite(db)
    try:
        worker = outbox(restarted, db, fake)
        assert worker.round() == 1
        assert len(fake.sends) == 1  # found by Message-ID, not sent again
        [ack] = acks(restarted)
        assert ack.ok and ack.provider_id == "mem-1"
        assert sent_message(restarted)[1:] == ("sent", "mem-1")
    finally:
        restarted.close()


def test_s12_read_flag_and_deletion_are_executed_at_the_provider(engine: Engine, db: str) -> None:
    fake = MemoryOutbound()
    fake.add(ADDRESS, "p-1", "<m1@customer.test>")
    apply(engine, {"cmd": "SyncMessage", "mailbox": "mb-ann", "message": {
        "id": "p-1", "message_id": "<m1@customer.test>", "from": "carla@customer.test",
        "to": [ADDRESS], "subject": "Hi", "sent_at": "2026-02-01T09:00:00Z"}},
        {"cmd": "MarkMessageRead", "user": "ann", "mailbox": "mb-ann", "id": "p-1"},
        {"cmd": "DeleteMessage", "user": "ann", "mailbox": "mb-ann", "id": "p-1"})
    worker = outbox(engine, db, fake)
    assert worker.round() == 1  # one request per mailbox and round, oldest first
    assert fake.is_read(ADDRESS, "p-1") is True
    assert worker.round() == 1
    assert fake.is_read(ADDRESS, "p-1") is None  # trashed
    assert [a.operation for a in acks(engine)] == ["read", "delete"]
    assert all(a.ok for a in acks(engine))
    assert engine.state("acme").outbound == {}


def test_s12_deleting_crm_sent_mail_trashes_the_providers_copy(engine: Engine, db: str) -> None:
    fake = MemoryOutbound()
    apply(engine, SEND)
    worker = outbox(engine, db, fake)
    worker.round()
    mid = sent_message(engine)[0]
    apply(engine, {"cmd": "DeleteMessage", "user": "ann", "mailbox": "mb-ann", "id": mid})
    worker.round()
    assert fake.is_read(ADDRESS, "mem-1") is None


def test_s14_graph_like_send_without_id_maps_the_synced_copy(engine: Engine, db: str) -> None:
    fake = MemoryOutbound(visible_after_send=False)
    apply(engine, SEND)
    outbox(engine, db, fake).round()
    mid, status, provider_id = sent_message(engine)
    assert (status, provider_id) == ("sent", None)
    fake.file_sent()
    apply(engine, {"cmd": "SyncMessage", "mailbox": "mb-ann", "message": {
        "id": "mem-1", "message_id": f"<{mid}.acme@crmsync.invalid>", "thread_id": "conv-1",
        "from": ADDRESS, "to": ["carla@customer.test"], "subject": "Offer",
        "sent_at": "2026-03-01T00:00:00Z", "labels": ["SentItems"]}})
    state = engine.state("acme")
    assert ("mb-ann", "mem-1") not in state.messages
    assert state.sent_provider_ids[("mb-ann", mid)] == "mem-1"


def test_restart_resumes_from_the_durable_watermark(engine: Engine, db: str) -> None:
    fake = MemoryOutbound(failures=[ProviderError("gmail", "503", 503)])
    apply(engine, SEND)
    first = outbox(engine, db, fake)
    first.round()  # failed once: the request stays open, the watermark stays before it
    assert first.tracking.position() < engine.head()
    second = outbox(engine, db, fake)
    assert second.position == first.tracking.position()
    second.round()
    assert [a.ok for a in acks(engine)] == [True]
    assert second.tracking.position() == engine.head()
    assert outbox(engine, db, fake).position == engine.head()
