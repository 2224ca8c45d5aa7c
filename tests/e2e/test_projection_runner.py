"""`crmsync run projections` as real processes on PostgreSQL: crash and resume, NOTIFY wake-up,
polling fallback, lag."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from histories import history
from processes import CRMSYNC

from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e

@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    e = open_engine("unused.db", postgres_url)
    e.follow = False  # only the runner processes project
    yield e
    e.close()


def start_runner(url: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(tmp_path / f"runner-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen([*CRMSYNC, "--postgres", url, "run", "projections", *args],
                                stdout=log, stderr=subprocess.STDOUT)


def wait_until(condition, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
    return time.monotonic() - started


def lowest(engine: Engine) -> int:
    return min(engine.positions().values())


def test_e3_runner_killed_mid_batch_resumes_with_no_gap_and_no_duplicate(
        engine: Engine, postgres_url: str, tmp_path: Path) -> None:
    first = [orjson.dumps(c) for c in history(11, length=900)]
    engine.apply_lines(first)
    total = engine.head()
    runner = start_runner(postgres_url, tmp_path, "--batch-size", "7", "--poll", "0.2")
    try:
        wait_until(lambda: lowest(engine) >= total // 5)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        runner.kill()
    stopped_at = lowest(engine)
    assert 0 < stopped_at < total, "the runner must be killed part-way"
    # more events arrive while no runner runs, in another tenant too
    engine.apply_lines([orjson.dumps(c) for c in history(12, length=200, tenant="beta")])
    runner = start_runner(postgres_url, tmp_path, "--batch-size", "50", "--poll", "0.2")
    try:
        head = engine.head()
        wait_until(lambda: lowest(engine) == head)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(20) == 0
    finally:
        runner.kill()
    results = engine.verify()  # a clean rebuild into scratch tables, compared by checksum
    assert all(live == rebuilt for live, rebuilt in results.values()), results
    # and the answers equal those of an engine that never crashed
    reference = Engine.open_in_memory()
    reference.apply_lines(first)
    reference.apply_lines([orjson.dumps(c) for c in history(12, length=200, tenant="beta")])
    for name in results:
        assert reference.checksums()[name] == engine.checksums()[name], name


def test_runner_is_woken_by_notify_not_by_its_poll(engine: Engine, postgres_url: str,
                                                    tmp_path: Path) -> None:
    runner = start_runner(postgres_url, tmp_path, "--poll", "30")
    try:
        time.sleep(1.5)  # started and listening
        engine.apply_lines([orjson.dumps(c) for c in history(3, length=5)])
        head = engine.head()
        took = wait_until(lambda: lowest(engine) == head, timeout=10)
        assert took < 5, f"NOTIFY should wake the runner long before its 30 s poll ({took:.1f} s)"
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(40)


def test_runner_keeps_polling_when_its_notification_connection_is_lost(
        engine: Engine, postgres_url: str, tmp_path: Path) -> None:
    runner = start_runner(postgres_url, tmp_path, "--poll", "0.5")
    try:
        killed: list[object] = []

        def kill_listener() -> bool:  # the runner may take a while to start on a busy machine
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                killed.extend(conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()").fetchall())
            return bool(killed)

        wait_until(kill_listener, timeout=20)
        assert killed, "the runner had a LISTEN connection"
        engine.apply_lines([orjson.dumps(c) for c in history(4, length=5)])
        head = engine.head()
        wait_until(lambda: lowest(engine) == head, timeout=15)
        assert runner.poll() is None, "the runner survived the lost connection"
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(20)


def test_lag_reports_each_projection_behind_the_log(engine: Engine, postgres_url: str) -> None:
    engine.apply_lines([orjson.dumps(c) for c in history(5, length=10)])
    head = engine.head()
    out = subprocess.run([*CRMSYNC, "--postgres", postgres_url, "lag", "--json"],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ})
    lag = json.loads(out.stdout)
    assert set(lag) >= {"timeline", "mailbox", "thread", "message", "directory"}
    assert all(v == {"position": 0, "lag": head, "stuck": []} for v in lag.values())
