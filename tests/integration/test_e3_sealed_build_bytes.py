"""E3 with sealed views (SPEC L2): a build writes byte for byte the rows incremental processing
wrote, though it reuses boxes differently (a message's first live row is held and sealed with its
history version, boxes are reused within a batch and by a bounded memo across batches), with
several events at one domain time across build batches, attachments, a deleted message and a
deleted user's erased content. Raw stored bytes are compared, not the checksums (which open the
boxes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.views.sqlite import SqliteViews
from projections.build import build
from projections.history import BASES, canonical_versions
from projections.projector import Projector
from projections.rows import PROJECTIONS
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SETUP = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "leo-gmail", "user": "leo", "provider": "gmail",
     "address": "leo@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "CreateContact", "record": "carl", "owner": "ada", "name": "Carl",
     "kind": "person", "emails": ["carl@customer.test"]},
    {"cmd": "SetGlobalVisibility", "user": "leo", "record_type": "contact", "level": "visible"},
    {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "contact", "level": "visible"},
]


def mail(user: str, n: int, thread: str, minute: int) -> dict[str, Any]:
    sent = (T0 + timedelta(minutes=minute, seconds=n)).isoformat()
    return {"cmd": "SyncMessage", "mailbox": f"{user}-gmail", "message": {
        "id": f"m{n}", "message_id": f"<m{n}@mail.test>", "thread_id": thread,
        "from": "carl@customer.test", "to": [f"{user}@acme.test"],
        "subject": "Same subject" if n % 3 else f"Subject {n}", "body": f"Body {n % 4}",
        "sent_at": sent, "labels": ["INBOX"],
        "attachments": [{"name": f"plan-{n}.pdf", "size": 10,
                         "content_type": "application/pdf"}] if n % 2 else []}}


def apply(engine: Engine, commands: list[dict[str, Any]], minute: int) -> None:
    at = (T0 + timedelta(minutes=minute)).isoformat()
    report = engine.apply_lines([orjson.dumps({"tenant": "acme", "at": at, **c})
                                 for c in commands])
    assert not report.rejected, report.rejected


def stored(views: SqliteViews) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection's stored rows as bytes; a history's as its canonical versions (a
    writer may leave redundant versions, which answer nothing different)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name in [*PROJECTIONS, *BASES]:
        rows = [tuple(r) for r in views.conn.execute(
            f"SELECT tenant, key, row_key, doc FROM view_{name}{views.suffix} ORDER BY 1, 2, 3")]
        out[name] = list(canonical_versions(rows)) if name in BASES else rows
    return out


def history(engine: Engine) -> None:
    apply(engine, SETUP, 0)
    # one domain time for many events (a build holds their message rows across batches), then
    # one time per command
    # ...and a message deleted at that time too (its first rows are still held by a build)
    apply(engine, [*(mail("leo" if n % 2 else "mia", n, f"t{n % 5}", 1) for n in range(12)),
                   {"cmd": "DeleteMessageAtProvider", "mailbox": "leo-gmail", "id": "m5"}], 1)
    for n in range(12, 18):
        apply(engine, [mail("leo", n, f"t{n % 5}", 2 + n)], 2 + n)
    apply(engine, [{"cmd": "UpdateMessage", "mailbox": "leo-gmail", "id": "m1", "read": True,
                    "labels": ["INBOX", "Done"]}], 30)
    apply(engine, [{"cmd": "DeleteMessageAtProvider", "mailbox": "leo-gmail", "id": "m3"}], 31)


def built(engine: Engine, db: str, batch_size: int) -> tuple[dict[str, list[tuple[Any, ...]]],
                                                             dict[str, list[tuple[Any, ...]]],
                                                             dict[str, bool]]:
    """The live views' stored rows, those a build writes into scratch tables, and whether
    each projection's checksums (content opened) are equal."""
    views = engine.stores().views
    assert isinstance(views, SqliteViews)
    scratch = SqliteViews(db, suffix="__b")  # the same keys: the key file beside the db
    try:
        for name in PROJECTIONS:
            scratch.reset(name)
        with scratch.exclusive():
            build(engine.stores().events, scratch, Projector(), batch_size=batch_size)
        same = {name: views.checksum(name) == scratch.checksum(name) for name in PROJECTIONS}
        return stored(views), stored(scratch), same
    finally:
        scratch.drop()
        scratch.close()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    monkeypatch.delenv("CRMSYNC_CONTENT_KEY", raising=False)  # the key file beside the db
    return str(tmp_path / "crm.db")


@pytest.mark.parametrize("batch_size", [3, 1000])
def test_e3_a_sealed_build_writes_the_bytes_incremental_processing_wrote(
        db: str, batch_size: int) -> None:
    engine = open_engine(db)
    try:
        history(engine)
        live, rebuilt, same = built(engine, db, batch_size)
    finally:
        engine.close()
    assert any(b'"sealed":["leo"' in doc for *_, doc in live["message_history"])
    assert not any(key.endswith("\x1fm5") for _, key, _, _ in live["message"])
    for name in live:
        assert rebuilt[name] == live[name], name
    assert all(same.values()), same


def test_l2_a_build_after_delete_user_writes_the_erased_rows_and_the_others_unchanged(
        db: str) -> None:
    """Versions sealed before DeleteUser open as erased; a build, after it, writes them
    erased (the key is gone): equal content (checksums), and every other row's bytes equal."""
    engine = open_engine(db)
    try:
        history(engine)
        apply(engine, [{"cmd": "DeleteUser", "user": "mia"}], 32)
        live, rebuilt, same = built(engine, db, 3)
    finally:
        engine.close()
    assert all(same.values()), same
    erased = 0
    for name in live:
        mine = [r for r in live[name] if b'"sealed":["mia"' not in r[-1]]
        theirs = [r for r in rebuilt[name] if b'"erased":true' not in r[-1]
                  or b"mia" not in r[-1]]
        erased += len(rebuilt[name]) - len(theirs)
        assert theirs == mine, name
        assert not any(b'"sealed":["mia"' in r[-1] for r in rebuilt[name]), name
    assert erased > 0
