"""E6 end to end on the sync path: two sync worker processes on two mailboxes of each tenant
(`benchmarks.sync_throughput`, small: `crmsync run webhooks`, two worker processes, `crmsync run
projections` on PostgreSQL and JetStream) store every pushed message exactly once. The benchmark
counts the MessageSynced events, the `message` view's rows and the sync status, and exits 1 on
any shortfall (issue #10: it used to count cursors, and one rejected batch of 500 went unseen)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

MESSAGES = 4000


def test_e6_two_sync_workers_of_one_tenant_store_every_message(postgres_url: str,
                                                               nats_url: str) -> None:
    base = postgres_url.split("?", 1)[0]  # the benchmark makes (and drops) schemas of its own
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_POSTGRES_URL"}
    env["PYTHONPATH"] = os.getcwd()
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.sync_throughput", "--postgres", base, "--nats",
         nats_url, "--messages", str(MESSAGES), "--mailboxes", "4", "--tenants", "2",
         "--batch", "25", "--round", "250"],
        capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    stored = next(line for line in run.stdout.splitlines() if line.startswith("stored: "))
    assert stored == (f"stored: MessageSynced events {MESSAGES}, CommandRejected events 0, "
                      f"message view rows {MESSAGES}, sync status synced {MESSAGES}, "
                      "sync status rejected 0")
