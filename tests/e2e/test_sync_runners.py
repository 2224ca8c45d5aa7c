"""The done-when test of the sync workers (issue #4): the real runners as processes —
`crmsync run webhooks`, `crmsync run sync` ×2, `crmsync run projections` — on PostgreSQL and
NATS JetStream, against a private Dovecot (IMAP, polled) and a local Gmail API server, both
holding real messages from the shared fedora-devel corpus.

It shows: mailboxes sync (Gmail backfill after MailboxConnected, IMAP by polling, every folder
but Junk); a redelivered
webhook changes nothing; a worker SIGKILLed in the middle of a delivery's batches loses and
duplicates nothing; a deactivated user's deliveries are recorded as skipped and caught up on
reactivation (L1, L3); a mailbox deleted at the provider becomes `gone` on reactivation and keeps
its history (L4)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import imapclient
import pytest
from dovecot import DovecotServer, ensure_dovecot
from gmail_fake import GMAIL, FakeGmail
from processes import CRMSYNC, free_port
from services import corpus_file

from adapters.providers.mime import parse_message
from benchmarks.corpus import split_mbox
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

TENANT, IMAP_USER, IMAP_PASSWORD = "acme", "mia", "imap-Secret-123"


def fedora(count: int) -> list[bytes]:
    mbox = gzip.decompress(corpus_file("fedora-devel-2010-01", "2010-January.txt.gz")
                           .read_bytes())
    return [raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            for raw in split_mbox(mbox)[:count]]


# --- processes --------------------------------------------------------------------------------
class Runners:
    def __init__(self, tmp: Path, env: dict[str, str], postgres: str) -> None:
        self.tmp, self.env, self.postgres = tmp, env, postgres
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, postgres: bool = True) -> None:
        extra = ["--postgres", self.postgres] if postgres else []
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen([*CRMSYNC, *extra, *args], stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    ensure_dovecot()
    server = DovecotServer()
    server.add_user(IMAP_USER, IMAP_PASSWORD)
    server.start()
    yield server
    server.stop()


def test_sync_runners_end_to_end(postgres_url: str, nats_url: str, dovecot: DovecotServer,
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raws = fedora(240)  # the month has 292 messages
    gmail = FakeGmail(raws[:200])
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CRMSYNC_CREDENTIALS_KEY", key)
    suffix = uuid.uuid4().hex[:10]
    hooks_port = free_port()
    env = {**os.environ, "CRMSYNC_NATS_URL": nats_url, "CRMSYNC_NATS_STREAM": f"E{suffix}",
           "CRMSYNC_NATS_SUBJECT_PREFIX": f"e{suffix}.hooks", "CRMSYNC_NATS_DURABLE": "sync",
           "CRMSYNC_NATS_ACK_WAIT": "4", "CRMSYNC_CREDENTIALS_KEY": key,
           "CRMSYNC_GMAIL_API_URL": gmail.url, "CRMSYNC_LOG_LEVEL": "INFO",
           "PYTHONPATH": os.getcwd(), "CRMSYNC_GMAIL_PUSH_AUTH": "off"}  # unsigned pushes
    runners = Runners(tmp_path, env, postgres_url)
    engine: Engine = open_engine("unused.db", postgres_url)
    engine.follow = False  # the projection runner writes the views
    hooks = f"http://127.0.0.1:{hooks_port}/webhooks/gmail"

    # IMAP: 30 real messages in Dovecot before the mailbox is connected, two of them filed in
    # Sent and a folder of the user's (S1: all folders), and one in Junk (never synced)
    admin = imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=10)
    admin.login(IMAP_USER, IMAP_PASSWORD)
    for name in ("Sent", "Projects", "Junk"):
        admin.create_folder(name)
    for folder, raw in [*(("INBOX", r) for r in raws[200:228]), ("Sent", raws[228]),
                        ("Projects", raws[229]), ("Junk", raws[232])]:
        admin.append(folder, raw, msg_time=parse_message(raw, "seed").sent_at)

    def apply(*commands: dict[str, Any]) -> None:
        report = engine.apply_lines([json.dumps({"tenant": TENANT, **c}) for c in commands])
        assert not report.rejected, report.rejected

    def mailbox(name: str) -> Any:
        return engine.state(TENANT).mailboxes[name]

    def synced_ids(name: str) -> list[str]:
        return [e.message.id for _, e in engine.events(TENANT)
                if isinstance(e, ev.MessageSynced) and e.mailbox == name]

    pushes = iter(range(1, 10_000))

    def push(message_id: int | None = None) -> str:
        n = message_id if message_id is not None else next(pushes)
        data = json.dumps({"emailAddress": GMAIL, "historyId": gmail.history_id}).encode()
        body = {"message": {"data": base64.b64encode(data).decode(), "messageId": str(n),
                            "publishTime": datetime.now(UTC).isoformat()},
                "subscription": "projects/p/subscriptions/crmsync"}
        answer = httpx.post(hooks, json=body, timeout=10)
        assert answer.status_code == 202, answer.text
        return f"gmail:{n}"

    def done(delivery_id: str) -> bool:
        pattern = re.compile(r'"delivery_id": ?"' + re.escape(delivery_id) + r'".*'
                             r'"event": ?"delivery_done"|"event": ?"delivery_done".*'
                             r'"delivery_id": ?"' + re.escape(delivery_id) + '"')
        return any(pattern.search(runners.log(n)) for n in ("sync-1", "sync-2", "sync-3")
                   if (tmp_path / f"{n}.log").exists())

    try:
        gmail.add(40, minutes_ago=30)
        apply({"cmd": "AddUser", "user": "root", "email": "root@acme.test", "role": "admin"},
              {"cmd": "AddUser", "user": "mia", "email": GMAIL, "role": "member"},
              {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
               "provider": "gmail", "address": GMAIL, "backfill_days": 7,
               "credentials": {"access_token": "ya29.e2e-token"}},
              {"cmd": "ConnectMailbox", "mailbox": "mia-imap", "user": "mia",
               "provider": "imap", "address": "mia@imap.test", "backfill_days": 9000,
               "credentials": {"host": dovecot.host, "port": dovecot.port,
                               "user": IMAP_USER, "password": IMAP_PASSWORD, "tls": False}})
        runners.start("webhooks", "run", "webhooks", "--port", str(hooks_port), postgres=False)
        for name in ("sync-1", "sync-2"):
            runners.start(name, "run", "sync", "--batch-size", "5", "--poll", "0.2",
                          "--imap-interval", "1", "--backoff", "0.5")
        runners.start("projections", "run", "projections", "--poll", "0.2")

        # 1. both mailboxes sync: Gmail by backfill after MailboxConnected, IMAP by polling
        wait_until(lambda: len(synced_ids("mia-gmail")) == 40 and mailbox("mia-gmail").cursor,
                   60, "gmail backfill")
        wait_until(lambda: len(synced_ids("mia-imap")) == 30 and mailbox("mia-imap").cursor,
                   60, "imap first sync")
        assert {i.split("/")[0] for i in synced_ids("mia-imap")} == {"INBOX", "Sent", "Projects"}
        admin.append("Projects", raws[230], msg_time=parse_message(raws[230], "x").sent_at)
        wait_until(lambda: len(synced_ids("mia-imap")) == 31, 30, "imap poll")
        assert synced_ids("mia-imap")[-1].startswith("Projects/")
        gmail.add(5)
        first = push()
        wait_until(lambda: len(synced_ids("mia-gmail")) == 45, 30, "webhook sync")
        wait_until(lambda: done(first), 30, "first delivery done")
        assert mailbox("mia-gmail").cursor == str(gmail.history_id)

        # 2. a redelivered webhook changes nothing (the same push again; a new empty push)
        seq = engine.state(TENANT).seq
        push(int(first.split(":")[1]))
        again = push()
        wait_until(lambda: done(again), 30, "empty delivery done")
        assert engine.state(TENANT).seq == seq

        # 3. SIGKILL the worker in the middle of a delivery's batches: nothing lost or doubled
        gmail.add(150)
        gmail.delay = 0.006
        before = len(synced_ids("mia-gmail"))
        big = push()
        wait_until(lambda: mailbox("mia-gmail").synced > before + 10, 30, "sync under way")
        busy = [n for n in ("sync-1", "sync-2") if f'"{big}"' in runners.log(n)
                and "delivery_started" in runners.log(n)]
        assert busy, "one worker must hold the delivery"
        runners.procs[busy[0]].send_signal(signal.SIGKILL)
        runners.procs[busy[0]].wait(10)
        partial = len(synced_ids("mia-gmail"))
        assert before < partial < before + 150, "the worker must die part-way"
        gmail.delay = 0.0
        runners.start("sync-3", "run", "sync", "--batch-size", "50", "--poll", "0.2",
                      "--imap-interval", "1")
        wait_until(lambda: len(synced_ids("mia-gmail")) >= before + 150
                   and mailbox("mia-gmail").cursor == str(gmail.history_id), 60,
                   "redelivery after the kill")
        ids = synced_ids("mia-gmail")
        assert len(ids) == len(set(ids)) == before + 150
        assert set(ids) == set(gmail.messages)

        # 4. L1/L3: a deactivated user's delivery is skipped; reactivation catches up
        apply({"cmd": "DeactivateUser", "user": "mia"})
        cursor = mailbox("mia-gmail").cursor
        gmail.add(3)
        skipped = push()
        wait_until(lambda: any(isinstance(e, ev.DeliverySkipped) and e.delivery_id == skipped
                               for _, e in engine.events(TENANT)), 30, "skip")
        skip = next(e for _, e in engine.events(TENANT)
                    if isinstance(e, ev.DeliverySkipped) and e.delivery_id == skipped)
        assert skip.reason == "user_deactivated"
        assert mailbox("mia-gmail").cursor == cursor
        assert len(synced_ids("mia-gmail")) == before + 150
        apply({"cmd": "ReactivateUser", "user": "mia"})
        wait_until(lambda: len(synced_ids("mia-gmail")) == before + 153, 30, "catch-up")

        # 5. L4: the account is deleted at the provider while the user is deactivated; on
        # reactivation the mailbox becomes gone and keeps every thread
        head = engine.head()
        wait_until(lambda: min(engine.positions().values()) >= head, 30, "views")
        threads_before = {t["thread"] for t in engine.query_mailbox(TENANT, "mia")}
        stored = mailbox("mia-gmail").stored
        apply({"cmd": "DeactivateUser", "user": "mia"})
        gmail.gone = True
        apply({"cmd": "ReactivateUser", "user": "mia"})
        wait_until(lambda: mailbox("mia-gmail").status == "gone", 30, "gone")
        assert mailbox("mia-gmail").stored == stored
        assert not any(isinstance(e, ev.MessageDeletedAtProvider | ev.MessageDeletionHeld)
                       for _, e in engine.events(TENANT))
        head = engine.head()
        wait_until(lambda: min(engine.positions().values()) >= head, 30, "views")
        assert {t["thread"] for t in engine.query_mailbox(TENANT, "mia")} == threads_before
        assert len(threads_before) > before + 153  # Gmail's threads and IMAP's
        # the IMAP mailbox goes on syncing meanwhile
        admin.append("INBOX", raws[231], msg_time=parse_message(raws[231], "y").sent_at)
        wait_until(lambda: len(synced_ids("mia-imap")) == 32, 30, "imap after all that")
        for name in ("sync-2", "sync-3", "sync-1"):
            assert "Traceback" not in (runners.log(name) if (tmp_path / f"{name}.log").exists()
                                       else "")
    finally:
        runners.stop_all()
        admin.logout()
        engine.close()
        gmail.close()
