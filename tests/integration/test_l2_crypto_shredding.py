"""SPEC L2 (crypto-shredding) and E4 (erasure holds for every `at`), on SQLite and PostgreSQL.

Content (subject, body, attachment names) is sealed in the log with its owner's data key;
DeleteUser records UserContentErased and destroys the key. Afterwards no byte of the deleted
user's content is in any file of the store (SQLite: the database, its -wal, key files) or in a
pg_dump of the schema, every replay answers it as erased, and rebuild, verify and the chain (E7)
still hold.
"""

from __future__ import annotations

import glob
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from adapters.errors import StoreError
from adapters.eventstore.store import EventStore
from adapters.views.sqlite import SqliteViews
from domain.errors import NotFound
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRETS = [b"Zebra-Quartz renewal", b"hello carl xyzzy-body", b"plan-Octopus.pdf"]
KEPT = b"Mia-Keeps-This subject"
KEPT_BODY = b"mia-body Walrus-Lantern"  # a live user's content: sealed in the views too
KEPT_NAME = b"mia-Heron-plan.pdf"
REFUSED_NAME = b"mia-Ibis-sheet.xlsx"  # refused by S8: its name is in the mailbox's last error
THREAD = "leo-gmail:t2"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def mail(mailbox: str, mid: str, thread: str, sender: str, to: str, subject: str, body: str,
         minute: int, attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"cmd": "SyncMessage", "mailbox": mailbox, "at": at(minute).isoformat(), "message": {
        "id": mid, "message_id": f"<{mid}@mail.test>", "thread_id": thread, "from": sender,
        "to": [to], "subject": subject, "body": body, "sent_at": at(minute).isoformat(),
        "attachments": attachments or []}}


SETUP = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "max", "email": "max@acme.test", "role": "manager"},
    {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member",
     "manager": "max"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "leo-gmail", "user": "leo", "provider": "gmail",
     "address": "leo@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "CreateContact", "record": "contact-carl", "owner": "max", "name": "Carl",
     "kind": "person", "emails": ["carl@customer.test"]},
    {"cmd": "SetGlobalVisibility", "user": "leo", "record_type": "contact", "level": "visible"},
    {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "contact", "level": "visible"},
]
MAIL = [
    mail("leo-gmail", "m1", "t2", "carl@customer.test", "leo@acme.test", SECRETS[0].decode(),
         SECRETS[1].decode(), 10,
         [{"name": SECRETS[2].decode(), "size": 1000, "content_type": "application/pdf"}]),
    mail("mia-gmail", "m2", "t3", "carl@customer.test", "mia@acme.test", KEPT.decode(),
         KEPT_BODY.decode(), 11,
         [{"name": KEPT_NAME.decode(), "size": 10, "content_type": "application/pdf"}]),
]
REFUSED = [mail("mia-gmail", "m3", "t4", "carl@customer.test", "mia@acme.test", "refused one",
                "refused body", 12, [{"name": REFUSED_NAME.decode(), "size": 10,
                                      "content_type": "application/vnd.ms-excel"}])]


def apply(engine: Engine, commands: list[dict[str, Any]], minute: int) -> None:
    lines = [orjson.dumps({"tenant": "acme", "at": at(minute).isoformat(), **c})
             for c in commands]
    report = engine.apply_lines(lines)
    assert not report.rejected, report.rejected


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str | None]]:
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    if request.param == "sqlite":
        monkeypatch.delenv("CRMSYNC_CONTENT_KEY", raising=False)  # the key file beside the db
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    yield str(tmp_path / "crm.db"), url


def stored_log(engine: Engine) -> bytes:
    """Every stored event's bytes as the recorder holds them."""
    notes = engine.stores().events.app.recorder.select_notifications(start=0, limit=1_000_000)
    return b"\n".join(n.state for n in notes)


def store_bytes(db: str, url: str | None) -> bytes:
    """All the bytes of the store: the SQLite files, or a pg_dump of the schema."""
    if url is None:
        return b"".join(Path(name).read_bytes() for name in sorted(glob.glob(db + "*")))
    schema = url.rsplit("%3D", 1)[1]
    dump = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))[-1]
    base = url.split("?", 1)[0]
    out = subprocess.run([dump, "--schema", schema, "--data-only", "--inserts", base],
                         capture_output=True, check=True)
    full = subprocess.run([dump, "--schema", schema, base], capture_output=True, check=True)
    return out.stdout + full.stdout


def test_l2_content_is_sealed_in_the_log_and_gone_from_the_store_after_delete_user(
        where: tuple[str, str | None]) -> None:
    db, url = where
    engine = open_engine(db, url)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
        log = stored_log(engine)
        for secret in [*SECRETS, KEPT]:  # never plaintext in the log, even before deletion
            assert secret not in log
        before = engine.query_thread("acme", "max", THREAD)
        assert before["messages"][0]["subject"] == SECRETS[0].decode()
        assert before["messages"][0]["body"] == SECRETS[1].decode()
        apply(engine, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        kinds = [e.event.__class__.__name__ for e in engine.read_log(0, 10_000)]
        assert kinds[-2:] == ["UserDeleted", "UserContentErased"]
        with pytest.raises(NotFound):
            engine.query_thread("acme", "max", THREAD)
        assert engine.query_thread("acme", "max", "mia-gmail:t3")["messages"][0]["subject"] \
            == KEPT.decode()
    finally:
        engine.close()
    everything = store_bytes(db, url)
    for secret in [*SECRETS, KEPT, KEPT_BODY, KEPT_NAME]:  # the views seal it too
        assert secret not in everything


def test_e4_l2_replay_before_the_deletion_answers_erased_and_rebuild_verify_still_pass(
        where: tuple[str, str | None]) -> None:
    db, url = where
    engine = open_engine(db, url)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
        apply(engine, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        thread = engine.query_thread("acme", "max", THREAD, at=at(15))
        assert [(m["id"], m["subject"], m["body"], m.get("erased")) for m in thread["messages"]
                ] == [("m1", None, None, True)]
        timeline = engine.query_timeline("acme", "max", "contact-carl", at=at(15))
        assert {t["thread"]: t["subject"] for t in timeline} == {
            THREAD: None, "mia-gmail:t3": KEPT.decode()}
        for viewer in ("ada", "max"):  # every viewer who could see it at the time
            answered = engine.query_thread("acme", viewer, THREAD, at=at(12))
            assert all(m["erased"] for m in answered["messages"])
        engine.rebuild()
        results = engine.verify()
        assert results and all(live == rebuilt for live, rebuilt in results.values()), results
        check = engine.verify_log("acme")
        assert check.failure is None and check.events == len(SETUP) + len(MAIL) + 2
    finally:
        engine.close()
    reopened = open_engine(db, url)  # another process: the key is gone for it too
    try:
        again = reopened.query_thread("acme", "max", THREAD, at=at(15))
        assert again["messages"][0]["subject"] is None
    finally:
        reopened.close()


def test_l2_no_new_key_for_a_deleted_user(where: tuple[str, str | None]) -> None:
    db, url = where
    engine = open_engine(db, url)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
        apply(engine, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        with pytest.raises(StoreError, match="destroyed"):
            engine.stores().events.keys.seal("acme", "leo", ["late content"])
    finally:
        engine.close()


def test_l2_a_key_destroyed_while_a_moved_tenants_tombstone_is_deleted_is_still_dropped(
        where: tuple[str, str | None]) -> None:
    """Processes drop cached keys when the *set* of destroyed keys changed, not its size: a
    shard move deletes the moved tenant's tombstones from the source, and a key destroyed there
    meanwhile must not stay usable in another process's cache (L2)."""
    db, url = where
    writer, other = open_engine(db, url), open_engine(db, url)  # two processes
    try:
        apply(writer, SETUP, 0)
        apply(writer, MAIL, 10)
        other.stores().events.keys.destroy("moved", "ann", T0.isoformat())  # a tombstone
        keys = writer.stores().events.keys
        keys.expire()
        assert keys.key("acme", "leo", create=False) is not None  # cached, one tombstone seen
        other.stores().events.keys._run("DELETE FROM content_keys WHERE tenant = ?", ("moved",))
        apply(other, [{"cmd": "DeleteUser", "user": "leo"}], 20)  # still one tombstone
        keys.expire()  # as the next append does
        with pytest.raises(StoreError, match="destroyed"):
            keys.seal("acme", "leo", ["late content"])
    finally:
        writer.close()
        other.close()


def test_l2_postgres_without_a_content_key_refuses_content(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_CONTENT_KEY")
    engine = open_engine("unused.db", postgres_url)
    try:
        apply(engine, SETUP, 0)
        with pytest.raises(StoreError, match="CRMSYNC_CONTENT_KEY"):
            engine.apply_lines([orjson.dumps({"tenant": "acme", **MAIL[0]})])
        with psycopg.connect(postgres_url) as conn:
            stored = conn.execute("SELECT count(*) FROM content_keys").fetchone()
        assert stored == (0,)
    finally:
        engine.close()


def test_l2_embedded_key_file_is_owner_only(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_CONTENT_KEY", raising=False)
    db = str(tmp_path / "crm.db")
    engine = open_engine(db)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
    finally:
        engine.close()
    assert (Path(db + ".content-key").stat().st_mode & 0o777) == 0o600


class DiesBeforeShredding(EventStore):
    """A process that dies after appending the erasure, before destroying the key."""

    def erase_user(self, tenant: str, user: str, at: datetime) -> None:
        raise RuntimeError("killed")


def test_l2_an_erasure_interrupted_before_the_key_was_destroyed_is_finished_on_the_next_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSYNC_CONTENT_KEY", raising=False)
    db = str(tmp_path / "crm.db")
    dying = Engine(DiesBeforeShredding.sqlite(db), SqliteViews(db), db)
    try:
        apply(dying, SETUP, 0)
        apply(dying, MAIL, 10)
        with pytest.raises(RuntimeError, match="killed"):
            apply(dying, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        keys = dying.stores().events.keys
        assert keys.key("acme", "leo", create=False) is not None  # not shredded
    finally:
        dying.close()
    engine = open_engine(db)
    try:
        assert engine.stores().events.keys.key("acme", "leo", create=False) is None
        answer = engine.query_thread("acme", "max", THREAD, at=at(15))
        assert answer["messages"][0]["subject"] is None
    finally:
        engine.close()


def test_l2_http_answers_erased_content_as_the_cli_does(tmp_path: Path) -> None:
    from loopback import Server

    from adapters.http.api import create_app
    from adapters.http.tokens import issue

    secret = b"test-secret-0123456789abcdef"
    engine = open_engine(str(tmp_path / "crm.db"))
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
        apply(engine, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        cli = engine.query_thread("acme", "max", THREAD, at=at(15))
        headers = {"authorization": f"Bearer {issue(secret, 'acme', 'max', False)}"}
        app = create_app(engine, secret, token_max_age=3600)
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            thread = client.get(f"/v1/threads/{THREAD}", params={"at": at(15).isoformat()},
                                headers=headers)
            timeline = client.get("/v1/records/contact-carl/timeline",
                                  params={"at": at(15).isoformat()}, headers=headers)
            live = client.get(f"/v1/threads/{THREAD}", headers=headers)
        assert thread.status_code == 200, thread.text
        assert thread.json() == cli
        assert [(m["subject"], m["body"], m["erased"]) for m in thread.json()["messages"]] == [
            (None, None, True)]
        erased = [t for t in timeline.json() if t["thread"] == THREAD]
        assert [(t["subject"], t["erased"]) for t in erased] == [(None, True)]
        assert live.status_code == 404
    finally:
        engine.close()


def test_l2_export_with_content_shows_erased_content_as_erased(
        where: tuple[str, str | None]) -> None:
    """Export (SPEC §7): content only where not erased; the store's marker never leaks."""
    from runners.services.export import export_lines

    db, url = where
    engine = open_engine(db, url)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL, 10)
        apply(engine, [{"cmd": "DeleteUser", "user": "leo"}], 20)
        lines = [orjson.loads(line) for line in export_lines(engine, "acme", with_content=True)]
        synced = {line["payload"]["message"]["id"]: line for line in lines
                  if line["type"] == "MessageSynced"}
        erased = [line for line in synced.values() if line["payload"].get("erased")]
        assert erased and all(line["payload"]["message"]["subject"] is None for line in erased)
        kept = [line for line in synced.values() if not line["payload"].get("erased")]
        assert kept and all(line["payload"]["message"]["subject"] for line in kept)
        assert not any(b"\\u0000" in orjson.dumps(line) for line in lines)
    finally:
        engine.close()


def answers(engine: Engine, at_: datetime | None = None) -> dict[str, Any]:
    """What the CLI answers about the mail: thread, timeline, mailbox (live, or as of `at_`)."""
    return {"thread_max": engine.query_thread("acme", "max", "mia-gmail:t3", at=at_),
            "thread_leo": engine.query_thread("acme", "leo", THREAD, at=at_),
            "timeline": engine.query_timeline("acme", "max", "contact-carl", at=at_),
            "mailbox": engine.query_mailbox("acme", "mia"),
            "status": engine.query_status("acme", "mia", "mia-gmail", at=at_)}


def test_l2_views_hold_no_plaintext_of_live_users_and_answer_as_before(
        where: tuple[str, str | None]) -> None:
    """The view rows seal a live user's subject, body and attachment names; answers (CLI and
    HTTP) are the plaintext ones, live and as of a past time; rebuild and verify still hold."""
    from loopback import Server

    from adapters.http.api import create_app
    from adapters.http.tokens import issue

    db, url = where
    engine = open_engine(db, url)
    try:
        apply(engine, SETUP, 0)
        apply(engine, MAIL + REFUSED, 10)
        live = answers(engine)
        as_of = answers(engine, at(30))  # from the views' histories, sealed as the live rows
        assert live == as_of
        message = live["thread_max"]["messages"][0]
        assert (message["subject"], message["body"], message["attachments"][0]["name"]) == (
            KEPT.decode(), KEPT_BODY.decode(), KEPT_NAME.decode())
        assert "_owner" not in message and "sealed" not in message
        assert REFUSED_NAME.decode() in str(live["status"])  # the last error, opened
        assert {t["thread"]: t["subject"] for t in live["timeline"]} == {
            THREAD: SECRETS[0].decode(), "mia-gmail:t3": KEPT.decode(),
            "mia-gmail:t4": "refused one"}
        engine.rebuild()
        results = engine.verify()
        assert results and all(a == b for a, b in results.values()), results
        assert answers(engine) == live
        secret = b"test-secret-0123456789abcdef"
        app = create_app(engine, secret, token_max_age=3600)
        headers = {"authorization": f"Bearer {issue(secret, 'acme', 'max', False)}"}
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            thread = client.get("/v1/threads/mia-gmail:t3", headers=headers)
            timeline = client.get("/v1/records/contact-carl/timeline", headers=headers)
        assert thread.status_code == 200, thread.text
        assert thread.json() == live["thread_max"]
        assert timeline.json() == live["timeline"]
    finally:
        engine.close()
    everything = store_bytes(db, url)
    for text in [*SECRETS, KEPT, KEPT_BODY, KEPT_NAME, REFUSED_NAME]:
        assert text not in everything
    reopened = open_engine(db, url)  # another process opens the sealed rows with the same keys
    try:
        assert answers(reopened) == live
    finally:
        reopened.close()
