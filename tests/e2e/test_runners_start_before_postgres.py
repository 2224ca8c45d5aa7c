"""Restarts heal themselves (issue #10): a runner started while PostgreSQL is still down waits for
it with backoff instead of exiting, then works. PostgreSQL here is the test's own server (the
shared one is never stopped)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_servers import PrivatePostgres
from processes import Processes, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def postgres_not_started() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.close()


def log_of(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_runners_started_before_postgres_wait_for_it_and_then_project(
        postgres_not_started: PrivatePostgres, tmp_path: Path) -> None:
    pg = postgres_not_started
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CRMSYNC_LOG_LEVEL": "INFO"}
    env.pop("CRMSYNC_NATS_URL", None)
    procs = Processes(tmp_path, str(tmp_path / "unused.db"), env)
    try:
        runner = procs.start("projections", "--postgres", pg.url, "run", "projections",
                             "--poll", "0.2")
        wait_until(lambda: "store_unavailable" in log_of(tmp_path, "projections"), 60,
                   "the runner says the store is unavailable")
        assert runner.poll() is None, log_of(tmp_path, "projections")  # still there, waiting
        pg.start()
        commands = tmp_path / "commands.jsonl"
        commands.write_text("\n".join(json.dumps({"cmd": "AddUser", "tenant": "acme",
                                                  "user": f"u{i}", "email": f"u{i}@acme.test",
                                                  "role": "member"}) for i in range(5)) + "\n")
        wait_until(lambda: "runner started" in log_of(tmp_path, "projections"), 60,
                   "the runner opened its stores once PostgreSQL was up")
        assert "store_reconnected" in log_of(tmp_path, "projections")
        applied = procs.cli("--postgres", pg.url, "apply", str(commands))
        assert applied.returncode == 0, applied.stderr

        def caught_up() -> bool:
            lag = procs.cli("--postgres", pg.url, "lag", "--json")
            if lag.returncode != 0:
                return False
            rows = json.loads(lag.stdout).values()
            return all(row["lag"] == 0 and row["position"] >= 5 for row in rows)

        wait_until(caught_up, 60, "the views are at the end of the log")
        wait_until(lambda: '"caught up"' in log_of(tmp_path, "projections"), 60,
                   "the runner itself read the new events")
        assert runner.poll() is None
    finally:
        procs.stop_all()
