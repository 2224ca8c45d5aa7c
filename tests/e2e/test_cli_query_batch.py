"""`crmsync query batch`: an auditor's many questions in one process, each answered exactly as the
one-shot `crmsync query` answers it; a line that is not a query, or not found, is answered with
its error and loses nothing else.

The office history of tests/e2e/test_cli_audit.py (ada admin, mia's thread `mb:t1`, private from
minute 10 to 12, ivy deactivated at minute 13).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from processes import CRMSYNC
from test_cli import run
from test_cli_audit import HISTORY, at, office_db
from test_cli_postgres import run as run_pg

pytestmark = pytest.mark.e2e

QUERIES = [
    f"access --tenant acme --viewer ada --thread mb:t1 --at {at(11)}",
    "access-history --tenant acme --viewer ada --thread mb:t1",
    "timeline --tenant acme --viewer max --record lead-1",
    f"timeline --tenant acme --viewer max --record lead-1 --at {at(11)}",
    "thread --tenant acme --viewer mia --thread mb:t1",
    "explain --tenant acme --viewer max --thread mb:t1",
    "mailbox --tenant acme --viewer mia",
    "records --tenant acme --viewer max",
    "status --tenant acme --viewer mia",
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return office_db(tmp_path)


def _replies(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def _one_shot(db: Path, line: str) -> Any:
    result = run(db, "query", *line.split(), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_batch_answers_each_query_as_the_one_shot_command_does(db: Path) -> None:
    result = run(db, "query", "batch", "-", stdin="\n".join(QUERIES) + "\n")
    assert result.returncode == 0, result.stderr
    replies = _replies(result)
    assert [r["line"] for r in replies] == list(range(1, len(QUERIES) + 1))
    for line, reply in zip(QUERIES, replies, strict=True):
        assert reply == {"line": reply["line"], "answer": _one_shot(db, line)}, line
    access = {e["user"]: e["visible"] for e in replies[0]["answer"]}
    assert access == {"ada": False, "max": False, "mia": True, "ivy": False}


def test_batch_line_errors_are_answered_and_lose_nothing_else(db: Path, tmp_path: Path) -> None:
    lines = [
        "# an auditor's comment, skipped",
        "access --tenant acme --viewer mia --thread mb:t1",  # a member: not found (V12)
        "timeline --tenant acme --viewer max",  # --record missing
        "shred --tenant acme",  # not a query
        "thread --tenant 'acme --viewer mia",  # unbalanced quote
        "mailbox -h",  # help is not a query; never printed into the answers
        "thread --tenant acme\0 --viewer mia --thread mb:t1",  # a NUL
        "records --tenant acme --viewer " + "x" * 5_000_000,  # 5 MB in a field
        "",
        "thread --tenant acme --viewer mia --thread mb:t1",
    ]
    path = tmp_path / "questions.txt"
    path.write_text("\n".join(lines) + "\n")
    result = run(db, "query", "batch", str(path))
    assert result.returncode == 1, result.stderr
    replies = _replies(result)
    assert [r["line"] for r in replies] == [2, 3, 4, 5, 6, 7, 8, 10]
    errors = {r["line"]: r.get("error", "") for r in replies}
    assert errors[2] == errors[7] == "not found"
    assert errors[8] == "invalid query: longer than 8192 bytes"
    for number in (3, 4, 5, 6):
        assert errors[number].startswith("invalid query: "), errors[number]
    assert "--record" in errors[3] and "shred" in errors[4]
    assert max(len(line) for line in result.stdout.splitlines()) < 100_000  # bounded answers
    assert replies[-1] == {"line": 10, "answer": _one_shot(db, lines[-1])}


def test_batch_of_an_unreadable_file_is_a_usage_error(db: Path, tmp_path: Path) -> None:
    result = run(db, "query", "batch", str(tmp_path / "missing.txt"))
    assert (result.returncode, result.stdout) == (2, "")
    assert "cannot read" in result.stderr


def test_batch_reads_the_views_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    result = run_pg(postgres_url, tmp_path, "apply", "-", stdin=HISTORY)
    assert result.returncode == 0, result.stderr
    asked = run_pg(postgres_url, tmp_path, "query", "batch", "-",
                   stdin="\n".join(QUERIES[:4]) + "\n")
    assert asked.returncode == 0, asked.stderr
    replies = _replies(asked)
    assert [i["thread"] for i in replies[2]["answer"]] == ["mb:t1"]
    assert replies[3]["answer"] == []  # private at minute 11: max does not see it
    history = {e["user"]: len(e["intervals"]) for e in replies[1]["answer"]}
    assert history == {"ada": 2, "max": 2, "mia": 1, "ivy": 1}


def test_batch_on_stdin_answers_each_question_before_the_next_is_asked(db: Path) -> None:
    """One process kept open: a question written, its answer read, then the next (each answer
    flushed as it is made)."""
    process = subprocess.Popen([*CRMSYNC, "--db", str(db), "query", "batch", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        for number, line in enumerate(QUERIES[:3], 1):
            process.stdin.write(line + "\n")
            process.stdin.flush()
            reply = json.loads(process.stdout.readline())
            assert reply["line"] == number and "answer" in reply, reply
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.stdout.close()
