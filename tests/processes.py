"""What the end-to-end tests need to run crmsync as processes: the command, a free loopback port,
and a bounded wait for a condition."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from domain.events import DomainEvent
from runners.services.engine import Engine

CRMSYNC = [shutil.which("crmsync") or ""] if shutil.which("crmsync") else [
    sys.executable, "-m", "runners.entrypoints.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.1)


def embedded_env(db: str, **extra: str) -> dict[str, str]:
    """The environment of crmsync processes in the embedded mode on `db` (no NATS, no
    PostgreSQL even when the test run has them), logging JSON at INFO."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CRMSYNC_NATS_URL", "CRMSYNC_POSTGRES_URL", "CRMSYNC_WEBHOOK_INBOX")}
    env.update({"CRMSYNC_LOG_LEVEL": "INFO", "PYTHONPATH": os.getcwd(), "CRMSYNC_DB": db,
                **extra})
    return env


class Processes:
    """The crmsync processes of one test on one database, each logging to `<name>.log` in
    `log_dir`; `stop_all` ends them (SIGTERM, then SIGKILL after `grace` seconds)."""

    def __init__(self, log_dir: Path, db: str, env: dict[str, str]) -> None:
        self.log_dir, self.db, self.env = log_dir, db, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen([*CRMSYNC, "--db", self.db, *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One `crmsync` command on the same database and environment, waited for."""
        return subprocess.run([*CRMSYNC, "--db", self.db, *args], env=self.env,
                              capture_output=True, check=False, text=True, timeout=60)

    def events(self, tenant: str) -> list[DomainEvent]:
        """The tenant's events as stored now (read through an engine of the test's own)."""
        engine = Engine.open_sqlite(self.db)
        try:
            return [e for _, e in engine.events(tenant)]
        finally:
            engine.close()

    def stop_all(self, grace: float = 15.0) -> None:
        stop(self.procs, grace)


def stop(procs: Iterable[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """SIGTERM to every process still running, then SIGKILL to any not gone after `grace` s."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
