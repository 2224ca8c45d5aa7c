"""The auditor commands (SPEC §7) as processes: `query access`, `query access-history`, `export`,
on SQLite and on PostgreSQL. Only admins may ask; everyone else gets "not found" (exit 3, V12).

The office (tests/office.py): ada admin, max manager of mia, mia's mailbox `mb` with thread
`mb:t1` from lead-1's address (minute 6), mia's lead level `visible` (minute 7). Then mia marks
the thread private (minute 10) and shared again (minute 12), and ivy is deactivated (minute 13).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from office import OFFICE
from test_cli import jsonl, run
from test_cli_postgres import run as run_pg

pytestmark = pytest.mark.e2e

LATER = [
    {"cmd": "MarkThreadPrivate", "user": "mia", "threads": ["mb:t1"]},  # minute 10
    {"cmd": "AddCollaborator", "record": "lead-1", "user": "ivy"},  # minute 11
    {"cmd": "MarkThreadShared", "user": "mia", "threads": ["mb:t1"]},  # minute 12
    {"cmd": "DeactivateUser", "user": "ivy"},  # minute 13
]
HISTORY = jsonl(OFFICE) + jsonl(LATER, start=10)


def at(minute: int) -> str:
    return f"2026-01-02T00:{minute:02d}:00+00:00"


def office_db(tmp_path: Path) -> Path:
    """A SQLite file holding HISTORY (also for other CLI tests of the same office)."""
    path = tmp_path / "crmsync.db"
    result = run(path, "apply", "-", stdin=HISTORY)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return office_db(tmp_path)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _windows(history: list[dict[str, Any]]) -> dict[str, list[tuple[str, str | None, str]]]:
    return {e["user"]: [(i["from"], i["to"], i["rule"]) for i in e["intervals"]]
            for e in history}


def check_history(history: list[dict[str, Any]]) -> None:
    assert _windows(history) == {
        "ada": [(at(7), at(10), "V3"), (at(12), None, "V1")],
        "max": [(at(7), at(10), "V3"), (at(12), None, "V1")],
        "mia": [(at(6), None, "V9")],
        "ivy": [(at(12), at(13), "V1")],
    }
    ivy = next(e for e in history if e["user"] == "ivy")["intervals"][0]
    assert ivy["opened_by"]["type"] == "ThreadMarked"
    assert ivy["closed_by"]["type"] == "UserDeactivated"
    assert ivy["closed_rule"] == "L1"


def test_v11_access_history_names_intervals_rules_and_events(db: Path) -> None:
    history = _json(run(db, "query", "access-history", "--tenant", "acme", "--viewer", "ada",
                        "--thread", "mb:t1", "--json"))
    check_history(history)


def test_v11_access_at_a_time_names_rule_and_deciding_event(db: Path) -> None:
    args = ("query", "access", "--tenant", "acme", "--viewer", "ada", "--thread", "mb:t1")
    private = {e["user"]: e for e in _json(run(db, *args, "--at", at(11), "--json"))}
    assert {u for u, e in private.items() if e["visible"]} == {"mia"}
    assert private["max"]["rule"] == "V1"
    assert private["max"]["event"]["type"] == "ThreadMarked"
    assert private["mia"]["rule"] == "V9"
    now = {e["user"]: e for e in _json(run(db, *args, "--json"))}
    assert {u for u, e in now.items() if e["visible"]} == {"ada", "max", "mia"}
    assert now["ivy"]["rule"] == "L1"
    assert now["ivy"]["event"]["type"] == "UserDeactivated"
    before = _json(run(db, *args, "--at", at(5), "--json"))
    assert {e["user"] for e in before} == {"ada", "max", "mia", "ivy"}
    assert not any(e["visible"] for e in before)


@pytest.mark.parametrize("viewer", ["max", "mia", "ivy", "ghost"])
def test_v12_members_managers_and_inactive_users_get_not_found(db: Path, viewer: str) -> None:
    for kind in ("access", "access-history"):
        result = run(db, "query", kind, "--tenant", "acme", "--viewer", viewer,
                     "--thread", "mb:t1", "--json")
        assert (result.returncode, result.stderr.strip(), result.stdout) == (3, "not found", "")


def test_v12_unknown_thread_or_tenant_is_not_found(db: Path) -> None:
    for tenant, thread in (("acme", "mb:nope"), ("globex", "mb:t1")):
        result = run(db, "query", "access-history", "--tenant", tenant, "--viewer", "ada",
                     "--thread", thread)
        assert result.returncode == 3, result.stderr
    assert run(db, "export", "--tenant", "globex").returncode == 3


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_export_writes_every_event_in_order_without_content(db: Path) -> None:
    lines = _lines(run(db, "export", "--tenant", "acme"))
    assert len(lines) == len(OFFICE) + len(LATER)
    assert [e["position"] for e in lines] == list(range(1, len(lines) + 1))
    assert set(lines[0]) == {"type", "position", "occurred_at", "actor", "correlation_id",
                             "command_id", "payload"}
    synced = next(e for e in lines if e["type"] == "MessageSynced")
    message = synced["payload"]["message"]
    assert (message["subject"], message["body"]) == (None, None)
    assert message["from"] == "olga@x.test"  # participants are metadata, not content
    assert "Hello" not in json.dumps(lines) and '"hi"' not in json.dumps(lines)


def test_export_with_content_and_a_time_window(db: Path) -> None:
    lines = _lines(run(db, "export", "--tenant", "acme", "--with-content",
                       "--since", at(6), "--until", at(10)))
    assert [e["type"] for e in lines] == ["MessageSynced", "GlobalVisibilitySet",
                                          "ThreadMarked"]
    assert lines[0]["payload"]["message"]["subject"] == "Hello"
    assert lines[0]["payload"]["message"]["body"] == "hi"


def test_access_history_and_export_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    result = run_pg(postgres_url, tmp_path, "apply", "-", stdin=HISTORY)
    assert result.returncode == 0, result.stderr
    check_history(_json(run_pg(postgres_url, tmp_path, "query", "access-history", "--tenant",
                               "acme", "--viewer", "ada", "--thread", "mb:t1", "--json")))
    denied = run_pg(postgres_url, tmp_path, "query", "access", "--tenant", "acme", "--viewer",
                    "mia", "--thread", "mb:t1")
    assert denied.returncode == 3
    lines = _lines(run_pg(postgres_url, tmp_path, "export", "--tenant", "acme"))
    assert len(lines) == len(OFFICE) + len(LATER)
    # the views are at lag 0: the query reads them as `serve` does (no in-process fold)
    items = _json(run_pg(postgres_url, tmp_path, "query", "timeline", "--tenant", "acme",
                         "--viewer", "max", "--record", "lead-1", "--json"))
    assert [i["thread"] for i in items] == ["mb:t1"]
