"""Issue #14 on PostgreSQL, over HTTP: `crmsync serve` and `crmsync run projections
--metrics-port` as processes, scraped. Serve's /readyz answers 503 while the views lag more than
CRMSYNC_READY_MAX_LAG and 200 once the projection runner caught up; HTTP durations carry route
templates; a store that refuses connections is not ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from processes import CRMSYNC, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from runners.bootstrap.config import open_engine
from runners.entrypoints.health import Probe, answer

pytestmark = pytest.mark.integration
SECRET = "metrics-test-secret-0123456789abcdef"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def lags(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {dict(labels)["projection"]: v for (name, labels), v in samples.items()
            if name == "crmsync_projection_lag_events"}


def readyz(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    except httpx.TransportError:
        return None


def test_serve_and_runner_metrics_and_readiness_follow_the_lag(postgres_url: str,
                                                                tmp_path: Path) -> None:
    env = {**os.environ, "CRMSYNC_SECRET": SECRET, "CRMSYNC_READY_MAX_LAG": "2",
           "PYTHONPATH": os.getcwd(), "CRMSYNC_GMAIL_PUSH_AUTH": "off"}
    for name in ("CRMSYNC_NATS_URL", "CRMSYNC_METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    base = [*CRMSYNC, "--postgres", postgres_url]
    lines = [json.dumps({"tenant": "acme", "cmd": "AddUser", "user": f"u{i}",
                         "email": f"u{i}@acme.test", "role": "admin" if i == 0 else "member"})
             for i in range(6)]
    engine = open_engine("unused.db", postgres_url)
    engine.follow = False  # events only: the views wait for a projection runner
    try:
        assert not engine.apply_lines(lines).rejected
    finally:
        engine.close()
    api, runner = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with (tmp_path / f"{name}.log").open("ab") as log:
            procs.append(subprocess.Popen([*base, *args], stdout=log,
                                          stderr=subprocess.STDOUT, env=env))

    try:
        start("serve", "serve", "--port", str(api))
        wait_until(lambda: readyz(api) is not None, 30, "serve up")
        answer = readyz(api)
        assert answer is not None and answer.status_code == 503
        assert "events behind the log (more than 2)" in answer.json()["reason"]
        assert httpx.get(f"http://127.0.0.1:{api}/healthz", timeout=10).status_code == 200
        before = scrape(api)
        assert before[("crmsync_store_up", frozenset())] == 1
        head = before[("crmsync_log_head_position", frozenset())]
        assert head >= len(lines)
        assert set(lags(before).values()) == {head}  # nothing projected yet

        token = subprocess.run([*base, "token", "--tenant", "acme", "--user", "u0"], env=env,
                               capture_output=True, text=True, timeout=30, check=True)
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        for thread in ("t-1", "t-2", "t-3"):
            httpx.get(f"http://127.0.0.1:{api}/v1/threads/{thread}", headers=headers,
                      timeout=10)

        start("projections", "run", "projections", "--poll", "0.2", "--metrics-port",
              str(runner))
        wait_until(lambda: (r := readyz(api)) is not None and r.status_code == 200, 60,
                   "serve ready once the views caught up")
        seen = scrape(runner)
        assert set(lags(seen).values()) == {0} and len(lags(seen)) == 8
        assert seen[("crmsync_log_head_position", frozenset())] == head
        assert readyz(runner) is not None and readyz(runner).status_code == 200  # type: ignore[union-attr]

        after = scrape(api)
        timed: dict[str, float] = {}
        for (name, labels), v in after.items():
            if name == "crmsync_http_request_duration_seconds_count":
                route = dict(labels)["route"]
                timed[route] = timed.get(route, 0) + v
        # three different thread ids: one route template, counted three times
        assert timed["/v1/threads/{thread:path}"] == 3
        assert not any("t-1" in route for route in timed)
        assert timed["/readyz"] >= 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_readyz_503_when_postgresql_refuses_connections() -> None:
    from runners.bootstrap.config_postgres import open_postgres

    port = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2"
    probe = Probe(lambda: open_postgres(url), timeout=10)
    reason = probe.ready()
    assert reason is not None and reason.startswith("store unreachable:"), reason


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_mailbox_states_count_every_tenants_mailboxes(kind: str, postgres_url: str,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("CRMSYNC_CREDENTIALS_KEY", base64.b64encode(os.urandom(32)).decode())
    engine = open_engine(str(tmp_path / "m.db"), postgres_url if kind == "postgres" else None)
    try:
        lines = []
        for tenant, boxes in (("acme", 2), ("globex", 1)):
            lines.append({"tenant": tenant, "cmd": "AddUser", "user": "mia",
                          "email": f"mia@{tenant}.test", "role": "member"})
            lines += [{"tenant": tenant, "cmd": "ConnectMailbox", "mailbox": f"b{i}",
                       "user": "mia", "provider": "imap", "address": f"b{i}@{tenant}.test"}
                      for i in range(boxes)]
        lines.append({"tenant": "acme", "cmd": "DisconnectMailbox", "mailbox": "b1"})
        report = engine.apply_lines([json.dumps(line) for line in lines])
        assert not report.rejected, report.rejected
        states = engine.mailbox_states()
        assert states == {("connected", False): 2, ("disconnected", False): 1}
    finally:
        engine.close()


def test_receiver_processes_counts_are_summed_with_the_store_gauges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from adapters.metrics import prometheus as metrics

    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path), "PYTHONPATH": os.getcwd()}
    code = "from adapters.metrics import prometheus as m; m.webhook('graph', 'accepted', {})"
    for count in (3, 4):  # two processes, each its own file, both gone when scraped
        subprocess.run([sys.executable, "-c", code.format(count)], env=env, check=True,
                       timeout=60)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    remove = metrics.register(metrics.StoreCollector(lambda: None))
    try:
        text = answer("/metrics", None)[1].decode()  # the directory from the environment
    finally:
        remove()
    seen = {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
    assert seen[("crmsync_webhook_deliveries_total",
                 frozenset({("provider", "graph"), ("outcome", "accepted")}))] == 7
    assert seen[("crmsync_store_up", frozenset())] == 0
