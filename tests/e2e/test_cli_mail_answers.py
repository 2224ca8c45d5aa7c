"""`crmsync apply` and `crmsync query thread` as processes (issue #13): the reactivation
warning on stderr with exit code 0 (L4), and the thread answer's attachments and Message-ID
(S8)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from processes import CRMSYNC

pytestmark = pytest.mark.e2e


def run(db: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CRMSYNC, "--db", str(db), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def jsonl(*commands: dict[str, Any]) -> str:
    return "".join(json.dumps({"tenant": "acme", "at": f"2026-01-02T00:{i:02d}:00Z", **c}) + "\n"
                   for i, c in enumerate(commands))


def test_l4_apply_prints_the_reactivation_warning_and_s8_thread_lists_attachments(
        tmp_path: Path) -> None:
    db = tmp_path / "crmsync.db"
    done = run(db, "apply", "-", stdin=jsonl(
        {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
         "address": "mia@acme.test"},
        {"cmd": "SyncMessage", "mailbox": "mia-gmail", "message": {
            "id": "m1", "message_id": "<m1@ext.test>", "thread_id": "T", "from": "x@ext.test",
            "to": ["mia@acme.test"], "subject": "Offer", "sent_at": "2026-01-02T00:02:00Z",
            "attachments": [{"name": "a.pdf", "size": 3, "content_type": "application/pdf"},
                            {"name": "b.exe", "size": 4, "content_type": "application/x"}]}},
        {"cmd": "DeactivateUser", "user": "mia"},
        {"cmd": "ReportMailboxGone", "mailbox": "mia-gmail"},
        {"cmd": "ReactivateUser", "user": "mia"}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6 applied, 0 unchanged, 0 rejected"
    [warning] = done.stderr.strip().splitlines()
    assert warning.startswith("line 6: warning: mailbox 'mia-gmail'") and "gone" in warning
    answer = run(db, "query", "thread", "--tenant", "acme", "--viewer", "mia", "--thread",
                 "mia-gmail:T", "--json")
    assert answer.returncode == 0, answer.stderr
    [message] = json.loads(answer.stdout)["messages"]
    assert message["message_id"] == "<m1@ext.test>"
    assert [(a["name"], a.get("refused", False)) for a in message["attachments"]] == [
        ("a.pdf", False), ("b.exe", True)]
