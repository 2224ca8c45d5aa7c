"""Issue #14's done-when test of the metrics: the runners as processes on PostgreSQL and NATS
JetStream (`run webhooks --workers 2`, `run sync`, `run projections`, each with
`--metrics-port`) and a local Gmail API server with real messages. After a sync, each scrape
counts what went in: the receivers' deliveries summed over both processes, the events appended
by type, the sync deliveries with their latency; the projections' lag returns to 0."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from gmail_fake import GMAIL, FakeGmail
from processes import CRMSYNC, free_port, stop
from prometheus_client.parser import text_string_to_metric_families
from services import corpus_file

from benchmarks.corpus import split_mbox
from domain import events as ev
from runners.bootstrap.config import open_engine

pytestmark = pytest.mark.e2e
TENANT = "acme"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sum of `name`'s samples carrying `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_until(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.1)


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def test_metrics_after_sync_runners(postgres_url: str, nats_url: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mbox = gzip.decompress(corpus_file("fedora-devel-2010-01", "2010-January.txt.gz")
                           .read_bytes())
    raws = [raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for raw in split_mbox(mbox)[:60]]
    gmail = FakeGmail(raws)
    suffix = uuid.uuid4().hex[:10]
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CRMSYNC_CREDENTIALS_KEY", key)
    env = {**os.environ, "CRMSYNC_NATS_URL": nats_url, "CRMSYNC_NATS_STREAM": f"M{suffix}",
           "CRMSYNC_NATS_SUBJECT_PREFIX": f"m{suffix}.hooks", "CRMSYNC_NATS_DURABLE": "sync",
           "CRMSYNC_CREDENTIALS_KEY": key, "CRMSYNC_GMAIL_API_URL": gmail.url,
           "CRMSYNC_LOG_LEVEL": "INFO", "PYTHONPATH": os.getcwd(),
           "CRMSYNC_GMAIL_PUSH_AUTH": "off", "CRMSYNC_POSTGRES_URL": postgres_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    hooks, hooks_metrics, sync_port, proj_port = (free_port() for _ in range(4))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> None:
        with (tmp_path / f"{name}.log").open("ab") as log:
            procs[name] = subprocess.Popen([*CRMSYNC, *args], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)

    engine = open_engine("unused.db", postgres_url)
    engine.follow = False

    def synced() -> int:
        return sum(isinstance(e, ev.MessageSynced) for _, e in engine.events(TENANT))

    def push(n: int) -> None:
        data = json.dumps({"emailAddress": GMAIL, "historyId": gmail.history_id}).encode()
        body = {"message": {"data": base64.b64encode(data).decode(), "messageId": str(n),
                            "publishTime": datetime.now(UTC).isoformat()},
                "subscription": "projects/p/subscriptions/crmsync"}
        answer = httpx.post(f"http://127.0.0.1:{hooks}/webhooks/gmail", json=body, timeout=10)
        assert answer.status_code == 202, answer.text

    def apply(*commands: dict[str, Any]) -> None:
        report = engine.apply_lines([json.dumps({"tenant": TENANT, **c}) for c in commands])
        assert not report.rejected, report.rejected

    try:
        gmail.add(20, minutes_ago=30)
        apply({"cmd": "AddUser", "user": "root", "email": "root@acme.test", "role": "admin"},
              {"cmd": "AddUser", "user": "mia", "email": GMAIL, "role": "member"},
              {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia",
               "provider": "gmail", "address": GMAIL, "backfill_days": 7,
               "credentials": {"access_token": "ya29.e2e-token"}})
        start("webhooks", "run", "webhooks", "--port", str(hooks), "--workers", "2",
              "--metrics-port", str(hooks_metrics))
        start("sync", "run", "sync", "--poll", "0.2", "--metrics-port", str(sync_port))
        start("projections", "run", "projections", "--poll", "0.2", "--metrics-port",
              str(proj_port))
        for port in (hooks, hooks_metrics, sync_port, proj_port):
            wait_until(lambda port=port: ready(port), 60, f"ready on {port}")
        wait_until(lambda: synced() == 20, 60, "backfill")
        pushes = 6
        for n in range(1, pushes + 1):  # each push brings one new message
            gmail.add(1)
            push(n)
            wait_until(lambda n=n: synced() == 20 + n, 30, f"push {n}")
        push(pushes)  # the same delivery again: a duplicate, nothing to do

        hooks_seen = scrape(hooks_metrics)  # the parent: the sum over both receivers
        assert value(hooks_seen, "crmsync_webhook_deliveries_total", provider="gmail",
                     outcome="accepted") == pushes
        assert value(hooks_seen, "crmsync_webhook_deliveries_total", provider="gmail",
                     outcome="duplicate") == 1
        served = value(scrape(hooks), "crmsync_http_request_duration_seconds_count",
                       route="/webhooks/gmail", status="202")
        assert served == pushes + 1  # whichever receiver answers the scrape, the sum

        def sync_done() -> bool:
            seen = scrape(sync_port)
            return value(seen, "crmsync_sync_batches_total", provider="gmail") == pushes

        wait_until(sync_done, 30, "every delivery counted")
        seen = scrape(sync_port)
        assert value(seen, "crmsync_sync_batches_total", provider="gmail",
                     outcome="done") == pushes
        assert value(seen, "crmsync_sync_batch_seconds_count", provider="gmail") == pushes
        assert value(seen, "crmsync_events_appended_total", type="MessageSynced") == 20 + pushes
        assert value(seen, "crmsync_dead_letters_total") == 0

        head = engine.head()

        def caught_up() -> bool:
            seen = scrape(proj_port)
            lags = [v for (n, _), v in seen.items() if n == "crmsync_projection_lag_events"]
            return value(seen, "crmsync_log_head_position") == head and len(lags) == 8 \
                and not any(lags)

        wait_until(caught_up, 60, "projection lag back to 0")
        seen = scrape(proj_port)
        assert value(seen, "crmsync_mailboxes", state="connected", suspect="false") == 1
        assert value(seen, "crmsync_store_up") == 1
        for name in procs:
            assert "Traceback" not in (tmp_path / f"{name}.log").read_text(errors="replace")
    finally:
        stop(procs.values())
        engine.close()
        gmail.close()


@pytest.mark.parametrize("runner", ["outbox", "contacts"])
def test_every_runner_serves_health_and_metrics(runner: str, tmp_path: Path) -> None:
    """`--metrics-port` (outbox) or CRMSYNC_METRICS_PORT (contacts), embedded on SQLite."""
    from processes import embedded_env

    db = str(tmp_path / "crm.db")
    port = free_port()
    env = embedded_env(db, CRMSYNC_CREDENTIALS_KEY=base64.b64encode(os.urandom(32)).decode())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = [*CRMSYNC, "--db", db, "run", runner]
    if runner == "outbox":
        args += ["--metrics-port", str(port)]
    else:
        env["CRMSYNC_METRICS_PORT"] = str(port)
    applied = subprocess.run([*CRMSYNC, "--db", db, "apply", "-"], env=env, text=True,
                             capture_output=True, timeout=60, check=False, input=json.dumps(
                                 {"tenant": TENANT, "cmd": "AddUser", "user": "root",
                                  "email": "root@acme.test", "role": "admin"}))
    assert applied.returncode == 0, applied.stderr
    from runners.services.engine import Engine

    engine = Engine.open_sqlite(db)
    try:
        head = engine.head()
    finally:
        engine.close()
    with (tmp_path / "runner.log").open("ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: ready(port), 60, "ready")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        seen = scrape(port)
        assert value(seen, "crmsync_store_up") == 1
        assert value(seen, "crmsync_log_head_position") == head > 0
        assert httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=10).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
