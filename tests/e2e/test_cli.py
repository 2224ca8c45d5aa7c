"""The `crmsync` command-line contract, run as separate processes on a SQLite file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from office import OFFICE
from processes import CRMSYNC

from projections.rows import PROJECTIONS

pytestmark = pytest.mark.e2e

SETUP = OFFICE


def run(db: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CRMSYNC, "--db", str(db), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def jsonl(commands: list[dict[str, Any]], start: int = 0) -> str:
    lines = []
    for i, c in enumerate(commands):
        lines.append(json.dumps({"tenant": "acme", "at": f"2026-01-02T00:{start + i:02d}:00Z",
                                 **c}))
    return "\n".join(lines) + "\n"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crmsync.db"
    (tmp_path / "setup.jsonl").write_text(jsonl(SETUP))
    result = run(path, "apply", str(tmp_path / "setup.jsonl"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{len(SETUP)} applied, 0 unchanged, 0 rejected"
    return path


def query(db: Path, *args: str) -> Any:
    result = run(db, "query", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_timeline_answer_has_the_contract_fields(db: Path) -> None:
    items = query(db, "timeline", "--tenant", "acme", "--viewer", "max", "--record", "lead-1")
    assert len(items) == 1
    item = items[0]
    assert item["thread"] == "mb:t1"
    assert item["subject"] == "Hello"
    assert item["owner"] == "mia"
    assert item["messages"] == 1
    assert item["last_activity"] == "2026-01-01T10:00:00+00:00"
    assert item["shared"] is True
    assert item["capabilities"] == {"view": True, "delivery_status": True, "read_status": False,
                                    "reply": False, "forward": True}


def test_v10_thread_answer_hides_read_state_from_non_owners(db: Path) -> None:
    mine = query(db, "thread", "--tenant", "acme", "--viewer", "mia", "--thread", "mb:t1")
    theirs = query(db, "thread", "--tenant", "acme", "--viewer", "max", "--thread", "mb:t1")
    assert mine["messages"][0]["read"] is True
    assert "read" not in theirs["messages"][0]
    assert theirs["messages"][0]["delivery_status"] == "delivered"
    assert {"id", "from", "to", "cc", "subject", "body", "sent_at"} <= set(theirs["messages"][0])


def test_v12_unknown_foreign_and_invisible_ids_exit_3_not_found(db: Path) -> None:
    for args in (["timeline", "--tenant", "acme", "--viewer", "max", "--record", "nope"],
                 ["timeline", "--tenant", "other", "--viewer", "max", "--record", "lead-1"],
                 ["timeline", "--tenant", "acme", "--viewer", "ivy", "--record", "lead-1"],
                 ["thread", "--tenant", "acme", "--viewer", "ivy", "--thread", "mb:t1"],
                 ["explain", "--tenant", "acme", "--viewer", "ivy", "--thread", "mb:t1"]):
        result = run(db, "query", *args, "--json")
        assert result.returncode == 3, args
        assert result.stderr.strip() == "not found"
        assert result.stdout == ""


def test_usage_errors_exit_2(db: Path) -> None:
    assert run(db, "query", "timeline", "--viewer", "max", "--record", "r").returncode == 2
    bad_at = run(db, "query", "mailbox", "--tenant", "acme", "--viewer", "mia", "--at", "soon")
    assert bad_at.returncode == 2
    assert "ISO-8601" in bad_at.stderr
    assert run(db, "frobnicate").returncode == 2


def test_v11_explain_names_rules_and_events(db: Path) -> None:
    answer = query(db, "explain", "--tenant", "acme", "--viewer", "max", "--thread", "mb:t1",
                   "--record", "lead-1")
    assert answer["visible"] is True
    rules = [r["rule"] for r in answer["rules"]]
    assert rules == ["S4", "V8", "V3"]
    assert answer["rules"][-1]["event"]["type"] == "GlobalVisibilitySet"


def test_e4_at_answers_as_of_that_domain_time(db: Path) -> None:
    before = query(db, "timeline", "--tenant", "acme", "--viewer", "max", "--record", "lead-1",
                   "--at", "2026-01-02T00:06:30Z")
    after = query(db, "timeline", "--tenant", "acme", "--viewer", "max", "--record", "lead-1",
                  "--at", "2026-01-02T00:07:00Z")
    assert before == []
    assert len(after) == 1


def test_apply_reports_each_rejection_and_applies_the_rest(db: Path, tmp_path: Path) -> None:
    bad = [
        {"cmd": "Frobnicate"},
        {"cmd": "AddUser", "user": "zed", "email": "zed@acme.test", "role": "member",
         "colour": "red"},
        {"cmd": "CreateLead", "record": "lead-2", "owner": "max", "name": 7, "emails": []},
        {"cmd": "ChangeOwner", "record": "ghost", "owner": "max"},
        {"cmd": "DeleteUser", "user": "mia"},
        {"cmd": "CreateLead", "record": "lead-3", "owner": "max", "name": "Ok",
         "emails": ["ok@x.test"]},
        {"cmd": "DeleteUser", "user": "ivy"},
        {"cmd": "ReactivateUser", "user": "ivy"},
    ]
    text = jsonl(bad, start=10) + "{not json\n"
    result = run(db, "apply", "-", stdin=text)
    assert result.returncode == 1
    assert result.stdout.strip() == "2 applied, 0 unchanged, 7 rejected"
    errors = result.stderr.strip().splitlines()
    assert errors[0] == "line 1: Frobnicate: cmd: unknown command"
    assert errors[1].startswith("line 2: AddUser: colour: ")
    assert errors[2].startswith("line 3: CreateLead: name: ")
    assert errors[3] == "line 4: ChangeOwner: record: unknown record 'ghost'"
    assert errors[4].startswith("line 5: DeleteUser: reassign_to: user 'mia' still owns 1 record")
    assert errors[5] == "line 8: ReactivateUser: user: user 'ivy' is deleted; deletion is permanent"
    assert errors[6].startswith("line 9: ?: (line): not valid JSON")
    records = query(db, "records", "--tenant", "acme", "--viewer", "ada")
    assert [r["record"] for r in records] == ["lead-1", "lead-3"]
    assert query(db, "timeline", "--tenant", "acme", "--viewer", "mia", "--record", "lead-1")


def test_e5_applying_a_file_twice_with_command_ids_changes_nothing(db: Path,
                                                                    tmp_path: Path) -> None:
    commands = [{**c, "command_id": f"k{i}"} for i, c in enumerate([
        {"cmd": "CreateContact", "record": "c-1", "owner": "mia", "name": "C", "kind": "person",
         "emails": ["c@x.test"]},
        {"cmd": "AddCollaborator", "record": "lead-1", "user": "ivy"},
        {"cmd": "AddCollaborator", "record": "lead-1", "user": "ivy"}])]
    path = tmp_path / "batch.jsonl"
    path.write_text(jsonl(commands, start=20))
    first = run(db, "apply", str(path))
    snapshot = query(db, "timeline", "--tenant", "acme", "--viewer", "ivy", "--record", "lead-1")
    second = run(db, "apply", str(path))
    assert first.stdout.strip() == "2 applied, 1 unchanged, 0 rejected"
    assert second.stdout.strip() == "0 applied, 3 unchanged, 0 rejected"
    assert second.returncode == 0
    assert query(db, "timeline", "--tenant", "acme", "--viewer", "ivy",
                 "--record", "lead-1") == snapshot


def test_mailbox_records_and_status_queries(db: Path) -> None:
    assert [t["thread"] for t in query(db, "mailbox", "--tenant", "acme", "--viewer",
                                       "mia")] == ["mb:t1"]
    assert query(db, "mailbox", "--tenant", "acme", "--viewer", "ada") == []
    assert query(db, "records", "--tenant", "acme", "--viewer", "max", "--email",
                 "OLGA@x.test") == [{"record": "lead-1", "type": "lead", "name": "Olga",
                                     "owner": "mia", "emails": ["olga@x.test"]}]
    status = query(db, "status", "--tenant", "acme", "--viewer", "mia")
    assert status[0]["mailbox"] == "mb"
    assert status[0]["synced"] == 1


def test_e3_rebuild_and_verify(db: Path) -> None:
    before = query(db, "timeline", "--tenant", "acme", "--viewer", "max", "--record", "lead-1")
    rebuilt = run(db, "rebuild", "--projection", "timeline")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert query(db, "timeline", "--tenant", "acme", "--viewer", "max",
                 "--record", "lead-1") == before
    assert run(db, "rebuild").returncode == 0
    verified = run(db, "verify")
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.count(" ok ") == len(PROJECTIONS)


def test_verify_fails_when_a_view_was_tampered_with(db: Path) -> None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE view_timeline SET doc = '{}'")
    result = run(db, "verify")
    assert result.returncode == 1
    assert "timeline     DIFFERS" in result.stdout


def test_demo_tells_the_story(tmp_path: Path) -> None:
    result = run(tmp_path / "unused.db", "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("V3", "V5", "V6", "V1", "V7", "L1", "L4", "L2", "verify: every projection"):
        assert text in result.stdout
    assert "!!" not in result.stdout
    assert not (tmp_path / "unused.db").exists()
