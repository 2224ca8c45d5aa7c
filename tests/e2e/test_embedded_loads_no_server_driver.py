"""The embedded default (SQLite file, SQLite webhook inbox) loads neither psycopg nor nats
(issue #12): the CLI's import, `apply`, `query`, `demo`, the engine `open_engine` builds, and the
HTTP app with its webhook routes, all in one fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from office import OFFICE
from processes import embedded_env

pytestmark = pytest.mark.e2e

SCRIPT = """
import json, sys

from runners.entrypoints.cli import main

SERVERS = ("psycopg", "psycopg_pool", "psycopg_c", "psycopg_binary", "nats")


def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in SERVERS)


db, commands, demo_db, out = sys.argv[1:5]
steps = {"import": loaded()}
codes = [main(["--db", db, "apply", commands]),
         main(["--db", db, "query", "mailbox", "--tenant", "acme", "--viewer", "mia", "--json"]),
         main(["--db", demo_db, "demo"])]
steps["cli"] = loaded()

from adapters.http.api import create_app
from adapters.http.webhooks import shared_client_state, webhook_router
from runners.bootstrap.config import open_engine
from runners.entrypoints.serve import webhook_inbox

engine = open_engine(db)
app = create_app(engine, b"s" * 32)
app.include_router(webhook_router(webhook_inbox(engine.path), shared_client_state(None), None))
engine.close()
steps["engine and app"] = loaded()
with open(out, "w") as fh:
    json.dump({"codes": codes, "steps": steps}, fh)
"""


def test_the_embedded_path_loads_no_postgresql_or_nats_driver(tmp_path: Path) -> None:
    db, out = tmp_path / "crmsync.db", tmp_path / "loaded.json"
    commands = tmp_path / "office.jsonl"
    commands.write_text("".join(json.dumps({"tenant": "acme", "at": f"2026-01-02T00:{i:02d}:00Z",
                                            **c}) + "\n" for i, c in enumerate(OFFICE)))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(db), str(commands),
                           str(tmp_path / "demo.db"), str(out)],
                          env=embedded_env(str(db)), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    assert found["codes"] == [0, 0, 0], done.stderr
    assert found["steps"] == {"import": [], "cli": [], "engine and app": []}
