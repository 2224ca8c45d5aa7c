"""E6 end to end: several `crmsync apply` processes on one tenant at once, without `at`, on SQLite
and on PostgreSQL — every command applied exactly once (issue #10). Counted in the store (events)
and in the views (`crmsync query records`), not in what the processes print."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from processes import CRMSYNC

from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

TENANT = "acme"
PROCESSES, PER_PROCESS = 4, 150
SETUP: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member"},
]


def lines(commands: list[dict[str, Any]]) -> str:
    return "".join(json.dumps({"tenant": TENANT, **c}) + "\n" for c in commands)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], str | None]:
    """The crmsync flags of one store, and its PostgreSQL URL (None: SQLite)."""
    if request.param == "sqlite":
        return ["--db", str(tmp_path / "crmsync.db")], None
    url = request.getfixturevalue("postgres_url")
    return ["--db", str(tmp_path / "unused.db"), "--postgres", url], url


def test_e6_concurrent_apply_processes_lose_nothing(store: tuple[list[str], str | None],
                                                    tmp_path: Path) -> None:
    flags, url = store
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_POSTGRES_URL"}
    env["PYTHONPATH"] = os.getcwd()
    setup = subprocess.run([*CRMSYNC, *flags, "apply", "-"], input=lines(SETUP), text=True,
                           capture_output=True, env=env, timeout=120, check=False)
    assert setup.returncode == 0, setup.stderr
    files = []
    for p in range(PROCESSES):
        path = tmp_path / f"writer-{p}.jsonl"
        path.write_text(lines([{"cmd": "CreateLead", "record": f"p{p}-{n}", "owner": "mia",
                                "name": f"Lead {p}.{n}", "emails": [f"p{p}n{n}@x.test"]}
                               for n in range(PER_PROCESS)]))
        files.append(path)
    procs = [subprocess.Popen([*CRMSYNC, *flags, "apply", str(f)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for f in files]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == f"{PER_PROCESS} applied, 0 unchanged, 0 rejected"
    total = PROCESSES * PER_PROCESS

    engine: Engine = open_engine(flags[1], url)
    try:
        kinds: dict[str, int] = {}
        for _, event in engine.events(TENANT):
            kinds[type(event).__name__] = kinds.get(type(event).__name__, 0) + 1
    finally:
        engine.close()
    assert kinds["LeadCreated"] == total and "CommandRejected" not in kinds
    query = subprocess.run([*CRMSYNC, *flags, "query", "records", "--tenant", TENANT,
                            "--viewer", "ada", "--json"], text=True, capture_output=True,
                           env=env, timeout=300, check=False)
    assert query.returncode == 0, query.stderr
    records = json.loads(query.stdout)
    assert sorted(r["record"] for r in records) == sorted(
        f"p{p}-{n}" for p in range(PROCESSES) for n in range(PER_PROCESS))
