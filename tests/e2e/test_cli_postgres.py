"""The `crmsync` command line in production mode: `--postgres URL` / $CRMSYNC_POSTGRES_URL, run as
separate processes against a fresh PostgreSQL schema."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_cli import CRMSYNC, SETUP, jsonl

pytestmark = pytest.mark.e2e


def run(url: str | None, tmp: Path, *args: str, stdin: str | None = None,
        env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_POSTGRES_URL"}
    if env_url is not None:
        env["CRMSYNC_POSTGRES_URL"] = env_url
    flags = ["--postgres", url] if url else []
    return subprocess.run([*CRMSYNC, "--db", str(tmp / "sqlite.db"), *flags, *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False,
                          env=env)


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path) -> str:
    result = run(postgres_url, tmp_path, "apply", "-", stdin=jsonl(SETUP))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{len(SETUP)} applied, 0 unchanged, 0 rejected"
    return postgres_url


def query(url: str, tmp: Path, *args: str) -> Any:
    result = run(url, tmp, "query", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_apply_and_query_on_postgres_leave_no_sqlite_file(pg: str, tmp_path: Path) -> None:
    items = query(pg, tmp_path, "timeline", "--tenant", "acme", "--viewer", "max",
                  "--record", "lead-1")
    assert [(i["thread"], i["shared"]) for i in items] == [("mb:t1", True)]
    theirs = query(pg, tmp_path, "thread", "--tenant", "acme", "--viewer", "max",
                   "--thread", "mb:t1")
    assert "read" not in theirs["messages"][0]  # V10, as on SQLite
    assert query(pg, tmp_path, "timeline", "--tenant", "acme", "--viewer", "max",
                 "--record", "lead-1", "--at", "2026-01-02T00:06:30Z") == []  # E4
    missing = run(pg, tmp_path, "query", "thread", "--tenant", "acme", "--viewer", "ivy",
                  "--thread", "mb:t1")
    assert missing.returncode == 3
    again = run(pg, tmp_path, "apply", "-", stdin=jsonl(SETUP[:1]))
    assert again.returncode == 1  # the user exists: rejected, as on SQLite
    assert not (tmp_path / "sqlite.db").exists()
    with psycopg.connect(pg) as conn:
        row = conn.execute("SELECT count(*) FROM view_timeline").fetchone()
    assert row is not None and row[0] == 1


def test_rebuild_and_verify_on_postgres(pg: str, tmp_path: Path) -> None:
    before = query(pg, tmp_path, "timeline", "--tenant", "acme", "--viewer", "max",
                   "--record", "lead-1")
    assert run(pg, tmp_path, "rebuild", "--projection", "timeline").returncode == 0
    assert run(pg, tmp_path, "rebuild").returncode == 0
    assert query(pg, tmp_path, "timeline", "--tenant", "acme", "--viewer", "max",
                 "--record", "lead-1") == before
    verified = run(pg, tmp_path, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.strip().splitlines()
    assert len(lines) >= 6
    assert all(" ok " in line for line in lines), verified.stdout
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("UPDATE view_timeline SET doc = '{}'::bytea")
    tampered = run(pg, tmp_path, "verify")
    assert tampered.returncode == 1
    assert "timeline     DIFFERS" in tampered.stdout


def test_the_environment_variable_selects_postgres(pg: str, tmp_path: Path) -> None:
    result = run(None, tmp_path, "query", "mailbox", "--tenant", "acme", "--viewer", "mia",
                 "--json", env_url=pg)
    assert result.returncode == 0, result.stderr
    assert [t["thread"] for t in json.loads(result.stdout)] == ["mb:t1"]
    assert not (tmp_path / "sqlite.db").exists()
    # the flag wins over the environment
    flag = run(pg, tmp_path, "query", "mailbox", "--tenant", "acme", "--viewer", "mia",
               "--json", env_url="postgresql://nobody@127.0.0.1:1/none")
    assert flag.returncode == 0, flag.stderr


def test_an_unreachable_server_is_a_store_failure(tmp_path: Path) -> None:
    result = run("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", tmp_path,
                 "query", "mailbox", "--tenant", "acme", "--viewer", "mia")
    assert result.returncode == 4
    assert result.stderr.startswith("crmsync: ")
    assert "Traceback" not in result.stderr
