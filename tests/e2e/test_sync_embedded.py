"""Embedded mode (SQLite, no NATS): `crmsync serve` receives a Gmail push and syncs it in-process;
`crmsync run webhooks` + `crmsync run sync --db` retry a failing delivery, dead-letter it (an
event in the tenant's log), and `crmsync deadletters list/replay` bring it back."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from gmail_fake import GMAIL, FakeGmail
from processes import Processes, embedded_env, free_port, wait_until

from domain import events as ev

pytestmark = pytest.mark.e2e

def raw_messages(count: int) -> list[bytes]:
    return [(f"From: sender{i}@ext.test\r\nTo: {GMAIL}\r\nSubject: hello {i}\r\n"
             f"Message-ID: <e{i}@ext.test>\r\nDate: Mon, 04 Jan 2010 10:00:00 +0000\r\n\r\n"
             f"body {i}\r\n").encode() for i in range(count)]


def test_embedded_sync_dead_letters_and_replay(tmp_path: Path) -> None:
    db = str(tmp_path / "crm.db")
    gmail = FakeGmail(raw_messages(20))
    env = embedded_env(db, CRMSYNC_GMAIL_API_URL=gmail.url,
                       CRMSYNC_SECRET="e2e-secret-0123456789")
    processes = Processes(tmp_path, db, env)
    start, cli = processes.start, processes.cli

    def tenant_events() -> list[ev.DomainEvent]:
        return processes.events("acme")

    def synced() -> set[str]:
        return {e.message.id for e in tenant_events() if isinstance(e, ev.MessageSynced)}

    pushes = iter(range(1, 1000))

    def push(port: int) -> str:
        n = next(pushes)
        data = json.dumps({"emailAddress": GMAIL, "historyId": gmail.history_id}).encode()
        answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/gmail", timeout=10, json={
            "message": {"data": base64.b64encode(data).decode(), "messageId": str(n),
                        "publishTime": datetime.now(UTC).isoformat()},
            "subscription": "projects/p/subscriptions/s"})
        assert answer.status_code == 202, answer.text
        return f"gmail:{n}"

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    try:
        gmail.add(5, minutes_ago=30)
        commands: list[dict[str, Any]] = [
            {"cmd": "AddUser", "user": "mia", "email": GMAIL, "role": "member"},
            {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
             "provider": "gmail", "address": GMAIL,
             "credentials": {"access_token": "ya29.embedded"}}]
        (tmp_path / "setup.jsonl").write_text(
            "\n".join(json.dumps({"tenant": "acme", **c}) for c in commands))
        assert cli("apply", str(tmp_path / "setup.jsonl")).returncode == 0

        # `serve` alone: the webhook lands in the SQLite inbox, the in-process worker syncs it
        port = free_port()
        serve = start("serve", "serve", "--port", str(port))
        wait_until(lambda: len(synced()) == 5, 30, "first sync in serve")
        wait_until(lambda: _up(port), 30, "serve up")
        gmail.add(2)
        push(port)
        wait_until(lambda: len(synced()) == 7, 30, "webhook synced in serve")
        stop(serve)

        # the provider fails: retried, then dead-lettered and recorded
        hooks_port = free_port()
        start("webhooks", "run", "webhooks", "--port", str(hooks_port))
        worker = start("sync", "run", "sync", "--max-attempts", "2", "--backoff", "0.2",
                       "--poll", "0.2")
        wait_until(lambda: _up(hooks_port), 30, "webhooks up")
        gmail.broken = True
        gmail.add(3)
        failing = push(hooks_port)
        wait_until(lambda: any(isinstance(e, ev.DeliveryDeadLettered) for e in tenant_events()),
                   30, "dead letter")
        (dead,) = [e for e in tenant_events() if isinstance(e, ev.DeliveryDeadLettered)]
        assert (dead.delivery_id, dead.attempts, dead.mailbox_id) == (failing, 2, "mia-gmail")
        assert "ya29" not in dead.error
        listed = cli("deadletters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (entry,) = json.loads(listed.stdout)
        assert (entry["id"], entry["delivery_id"], entry["tenant"]) == (
            dead.dead_letter_id, failing, "acme")
        assert len(synced()) == 7

        # the provider is back: replay brings the delivery back and it syncs
        gmail.broken = False
        replayed = cli("deadletters", "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        wait_until(lambda: len(synced()) == 10, 30, "replayed delivery synced")
        assert json.loads(cli("deadletters", "list", "--json").stdout) == []
        (record,) = [e for e in tenant_events() if isinstance(e, ev.DeadLetterReplayed)]
        assert (record.dead_letter_id, record.delivery_id) == (dead.dead_letter_id, failing)
        assert cli("deadletters", "replay", "999").returncode == 3
        stop(worker)
        assert worker.returncode == 0
    finally:
        processes.stop_all(grace=5)
        gmail.close()


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
