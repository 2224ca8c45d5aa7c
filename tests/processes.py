"""What the end-to-end tests need to run crmsync as processes: the command, a free loopback port,
and a bounded wait for a condition."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Callable

CRMSYNC = [shutil.which("crmsync") or ""] if shutil.which("crmsync") else [
    sys.executable, "-m", "runners.cli"]


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
