"""Replays (`?at=`) in a small process pool, for `crmsync serve`.

A replay folds the tenant's stream through the projector in Python: seconds of CPU holding the
GIL. In the server's interpreter it takes the GIL from the live readers every switch interval;
in worker processes the OS shares the cores instead. Each worker opens the event store once
(the server's settings, `EventStore.env`) and answers with `runners.services.engine.replayed` and
the query, exactly as in-process.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import datetime
from typing import Any

from adapters.eventstore.store import EventStore
from runners.services.engine import QUERIES, replayed

_store: EventStore | None = None  # the worker process's event store


def _open(env: dict[str, str], parent: int) -> None:
    global _store  # noqa: PLW0603 - one store per worker process, opened by the initializer
    _store = EventStore(env)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this worker when the server is gone: uvicorn re-raises SIGTERM after its shutdown,
    so the server dies before its `finally` closes the pool, and a worker blocked on the pool's
    queue (it holds both ends of the pipe) would never see EOF."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _replay(name: str, tenant: str, viewer: str, args: tuple[Any, ...], at: datetime) -> Any:
    assert _store is not None, "the worker's initializer opens the store"
    return QUERIES[name](replayed(_store, tenant, at), tenant, viewer, *args)


class ReplayPool:
    """`workers` processes answering replays; call it as Engine.replay."""

    def __init__(self, workers: int, store_env: dict[str, str]) -> None:
        # spawn: the server has threads (uvicorn, the sync worker); forking them is unsafe
        self._pool = multiprocessing.get_context("spawn").Pool(
            workers, initializer=_open, initargs=(store_env, os.getpid()))

    def __call__(self, name: str, tenant: str, viewer: str, args: tuple[Any, ...],
                 at: datetime) -> Any:
        return self._pool.apply(_replay, (name, tenant, viewer, args, at))

    def close(self) -> None:
        """Stop the workers at once: a replay in flight has no caller left to answer."""
        self._pool.terminate()
        self._pool.join()
