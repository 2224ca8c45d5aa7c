"""A PostgreSQL and a NATS JetStream server of one test's own, to stop and start while crmsync runs
(the shared servers on 5432/4222 must never be restarted: other tests use them).

PostgreSQL: `initdb` + `pg_ctl` from /usr/lib/postgresql/*/bin in a temporary directory, on a
free loopback port, trust authentication, fsync off. initdb refuses to run as root: as root the
commands run as the `postgres` user (`runuser`). NATS: `nats-server -js -sd DIR -p PORT`, its
store kept across restarts (a SIGKILL included). A missing binary skips the test with the
reason, or fails it under CRMSYNC_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from services import missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} not {'up' if up else 'down'} after {timeout} s")


class PrivatePostgres:
    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            missing("PostgreSQL server binaries (initdb) not found in /usr/lib/postgresql")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="crmsync-pg-"))
        self.dir.chmod(0o777)  # the postgres user writes here when we are root
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return (f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
                "?options=-csearch_path%3Dcrm")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True,
                              text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            missing(f"{tool} exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start")
        _wait_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions ended, a clean shutdown; `immediate`: like a crash (recovery on
        the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        _wait_port(self.port, up=False)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data),
                            "-m", "fast", "-w", "stop"], capture_output=True, timeout=60,
                           check=False)
        if not os.environ.get("CRMSYNC_KEEP_SERVER_FILES"):  # to look at them after a failure
            shutil.rmtree(self.dir, ignore_errors=True)


class PrivateNats:
    def __init__(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            missing("nats-server not found on PATH")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="crmsync-nats-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-sd", str(self.dir / "store"), "-a", "127.0.0.1",
                 "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, up=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None
        _wait_port(self.port, up=False)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
