"""E8 as the issue saw it: a record id with a NUL, stored by an older version in tenant A, used to
make `crmsync run projections` exit on PostgreSQL, for every tenant. Now the runner keeps
projecting B, holds A back, and `crmsync lag --json` names A with its position and error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import CRMSYNC, wait_until
from stuck_fixtures import inject, lead, lead_event, setup_tenant

from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    e = open_engine("unused.db", postgres_url)
    e.follow = False  # only the runner process projects
    yield e
    e.close()


def has(engine: Engine, tenant: str, record: str) -> bool:
    return bool(engine.committed_views().rows("directory", tenant, f"record:{record}"))


def test_e8_runner_goes_on_past_a_tenant_whose_event_cannot_be_stored(
        engine: Engine, postgres_url: str, tmp_path: Path) -> None:
    setup_tenant(engine, "a", "lead-a1")
    setup_tenant(engine, "b", "lead-b1")
    bad = inject(engine, "a", lead_event("a", "x\x00y"), lead_event("a", "lead-a2"))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with open(tmp_path / "runner.log", "wb") as out:
        runner = subprocess.Popen([*CRMSYNC, "--postgres", postgres_url, "run", "projections",
                                   "--poll", "0.2"], stdout=out, stderr=subprocess.STDOUT,
                                  env=env)
    try:
        lead(engine, "b", "lead-b2")
        head = engine.head()
        wait_until(lambda: min(engine.positions().values()) == head, timeout=60,
                   what="the runner reaches the head of the log")
        assert runner.poll() is None, "the runner is still running"
        assert has(engine, "b", "lead-b2")
        assert has(engine, "a", "lead-a1") and not has(engine, "a", "lead-a2")
        shown = subprocess.run([*CRMSYNC, "--postgres", postgres_url, "lag", "--json"],
                               capture_output=True, text=True, timeout=60, check=True, env=env)
        lag = json.loads(shown.stdout)
        for name, value in lag.items():
            assert value["lag"] == 0, name
            assert [(s["tenant"], s["position"]) for s in value["stuck"]] == [("a", bad)], name
            assert "cannot be stored" in value["stuck"][0]["error"]
        lead(engine, "b", "lead-b3")  # and B keeps following
        wait_until(lambda: has(engine, "b", "lead-b3"), timeout=60, what="B keeps projecting")
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
