"""`crmsync query problems` and `crmsync query settings` as processes (issue #14), on SQLite and
on PostgreSQL: active admins get the answers, anyone else "not found" (exit 3, V12)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from admin_story import STORY, lines
from test_cli import run
from test_cli_postgres import run as run_pg

pytestmark = pytest.mark.e2e

HISTORY = "".join(line.decode() + "\n" for line in lines())
PROBLEMS = {("suspect", "mb1"), ("gone", "mb2"), ("disconnected", "mb3"), ("refused", "mb4"),
            ("dead_letter", "dl-1"), ("dead_letter", "dl-2")}


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _kinds(found: list[dict[str, Any]]) -> set[tuple[str, str]]:
    # no stale entries: the story's domain time is far behind any wall clock, so every
    # connected mailbox of an active user is stale; they are left out here
    return {(p["kind"], p.get("dead_letter") or p["mailbox"]) for p in found
            if p["kind"] != "stale"}


def check(query: Any) -> None:
    problems = _json(query("query", "problems", "--tenant", "acme", "--viewer", "ada", "--json"))
    assert _kinds(problems) == PROBLEMS
    assert {p["mailbox"] for p in problems if p["kind"] == "stale"} == {"mb1", "mb4"}
    suspect = next(p for p in problems if p["kind"] == "suspect")
    assert suspect["held_deletions"] == ["a1", "a2", "a3"]
    settings = _json(query("query", "settings", "--tenant", "acme", "--viewer", "ada", "--json"))
    assert [u["user"] for u in settings["users"]] == ["ada", "ivy", "leo", "max", "mia"]
    assert settings["configuration"]["bcc_address"] == "drop@acme.test"
    for viewer in ("mia", "max", "ivy", "nobody"):
        for kind in ("problems", "settings"):
            refused = query("query", kind, "--tenant", "acme", "--viewer", viewer, "--json")
            assert refused.returncode == 3, (viewer, kind, refused.stdout)
            assert refused.stdout == "" and refused.stderr.strip() == "not found"


def test_s7_cli_problems_and_settings_for_admins_only(tmp_path: Path) -> None:
    db = tmp_path / "crmsync.db"
    applied = run(db, "apply", "-", stdin=HISTORY)
    assert applied.stdout.strip() == f"{len(STORY)} applied, 0 unchanged, 0 rejected"
    check(lambda *args: run(db, *args))


def test_s7_cli_problems_and_settings_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    applied = run_pg(postgres_url, tmp_path, "apply", "-", stdin=HISTORY)
    assert applied.returncode == 0, applied.stderr
    check(lambda *args: run_pg(postgres_url, tmp_path, *args))
