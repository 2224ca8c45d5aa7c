"""Health, readiness and metrics endpoints (issue #14) for `crmsync serve` (routes on its app)
and every runner (`--metrics-port` / CRMSYNC_METRICS_PORT, a small HTTP server in a thread).

- `/healthz`: 200 while the process runs.
- `/readyz`: 200 when the event store answers and, where projection runners keep the views
  (PostgreSQL), no projection is more than CRMSYNC_READY_MAX_LAG events behind the log (default
  1000); else 503 with the reason. The check runs in a thread of its own and gives up after
  CRMSYNC_READY_TIMEOUT seconds (default 5): a store that does not answer is not ready. Both
  come from the entrypoint's settings (runners.bootstrap.settings), as the port and host do.
- `/metrics`: the Prometheus text exposition (adapters.metrics.prometheus).

A runner's probe opens its own engine, lazily and again after a failure, so a store that is down
at start makes the runner not ready rather than unable to answer.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from adapters.metrics import prometheus as metrics

if TYPE_CHECKING:
    from fastapi import FastAPI

    from runners.bootstrap.settings import Settings
    from runners.services.engine import Engine

DEFAULT_MAX_LAG, DEFAULT_TIMEOUT = 1000, 5.0


class EngineView:
    """The store collector's and readiness check's reads of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self) -> int:
        return self.engine.head()

    def positions(self) -> Mapping[str, int]:
        return self.engine.positions()

    def mailbox_states(self) -> Mapping[tuple[str, bool], int] | None:
        return self.engine.mailbox_states()


class Probe:
    """Opens (and reopens after a store failure) the engine its reads go through, and answers
    whether the process is ready."""

    def __init__(self, opener: Callable[[], Engine], *, names: Sequence[str] | None = None,
                 gate_lag: bool = True, max_lag: int = DEFAULT_MAX_LAG,
                 timeout: float = DEFAULT_TIMEOUT, owned: bool = True) -> None:
        self.opener, self.names, self.gate_lag, self.owned = opener, names, gate_lag, owned
        # negative values (a typo) mean the defaults, as they always did
        self.max_lag = max_lag if max_lag >= 0 else DEFAULT_MAX_LAG
        self.timeout = timeout if timeout >= 0 else DEFAULT_TIMEOUT
        self._engine: Engine | None = None
        self._lock = threading.Lock()  # the check in flight
        self._opening = threading.Lock()  # the engine (opening may wait on the store)
        self._running: float | None = None  # when the check in flight started

    def view(self) -> EngineView | None:
        with self._opening:
            if self._engine is None:
                self._engine = self.opener()
            return EngineView(self._engine)

    def _failed(self) -> None:
        """Drop an engine of our own after a failure: the next read opens a fresh one."""
        with self._opening:
            engine, self._engine = self._engine, None
        if engine is not None and self.owned:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                engine.close()

    def check(self) -> str | None:
        """None when ready, else why not (runs in the caller's thread)."""
        try:
            view = self.view()
            assert view is not None
            head = view.head()
            positions = view.positions()
        except Exception as exc:
            self._failed()
            return f"store unreachable: {type(exc).__name__}: {exc}"[:500]
        if not self.gate_lag:
            return None
        behind = {name: head - at for name, at in positions.items()
                  if (self.names is None or name in self.names) and head - at > self.max_lag}
        if behind:
            worst = max(behind, key=lambda n: behind[n])
            return (f"projection {worst} is {behind[worst]} events behind the log "
                    f"(more than {self.max_lag})")
        return None

    def ready(self) -> str | None:
        """`check` bounded by the timeout; one check in flight at a time."""
        with self._lock:
            if self._running is not None:
                return (f"store did not answer within "
                        f"{time.monotonic() - self._running:.1f} s")
            self._running = time.monotonic()
        answer: list[str | None] = []

        def run() -> None:
            try:
                answer.append(self.check())
            finally:
                with self._lock:
                    self._running = None

        worker = threading.Thread(target=run, name="crmsync-readyz", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if not answer:
            return f"store did not answer within {self.timeout:g} s"
        return answer[0]

    def close(self) -> None:
        with self._opening:
            engine, self._engine = self._engine, None
        if engine is not None and self.owned:
            engine.close()


def collector(probe: Probe) -> metrics.StoreCollector:
    def view() -> EngineView | None:
        try:
            return probe.view()
        except Exception:
            probe._failed()
            raise

    return metrics.StoreCollector(view, probe.names)


Ready = Callable[[], str | None]


def answer(path: str, ready: Ready | None) -> tuple[int, bytes, str]:
    """(status, body, content type) for a health or metrics path; 404 for anything else."""
    if path == "/healthz":
        return 200, b'{"status":"ok"}', "application/json"
    if path == "/readyz":
        reason = ready() if ready is not None else None
        if reason is None:
            return 200, b'{"status":"ready"}', "application/json"
        return 503, orjson.dumps({"status": "not ready", "reason": reason}), "application/json"
    if path == "/metrics":
        # prometheus_client's own variable (not a crmsync setting): `run webhooks` sets it
        # for its receiver processes, which all expose the sum over its files
        body, kind = metrics.exposition(multiproc_dir=os.environ.get(metrics.MULTIPROC_ENV))
        return 200, body, kind
    return 404, b'{"detail":"not found"}', "application/json"


def add_routes(app: FastAPI, ready: Ready | None) -> None:
    """/healthz, /readyz and /metrics on an application, and its requests timed by route
    (by the API's own RequestTiming where it has one: one middleware times a request once)."""
    from fastapi import Response
    from starlette.concurrency import run_in_threadpool

    async def endpoint(path: str) -> Response:
        status, body, kind = await run_in_threadpool(answer, path, ready)
        return Response(body, status, media_type=kind)

    async def healthz() -> Response:
        return await endpoint("/healthz")

    async def readyz() -> Response:
        return await endpoint("/readyz")

    async def metrics_() -> Response:
        return await endpoint("/metrics")

    for path, handler in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics_)):
        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False)
    from adapters.http.request_timing import RequestTiming

    if not any(getattr(m, "cls", None) is RequestTiming for m in app.user_middleware):
        app.add_middleware(RequestTiming, log=False)


class _Handler(BaseHTTPRequestHandler):
    ready: Ready | None = None

    def do_GET(self) -> None:
        status, body, kind = answer(self.path.split("?", 1)[0], type(self).ready)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def start_server(port: int, ready: Ready | None, host: str = "127.0.0.1"
                 ) -> Callable[[], None]:
    """Serve /healthz, /readyz and /metrics on `port` in a daemon thread; returns the stop."""
    handler = type("HealthHandler", (_Handler,), {"ready": staticmethod(ready) if ready
                                                  else None})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="crmsync-metrics", daemon=True)
    thread.start()
    structlog.get_logger("crmsync.health").info("metrics_serving", port=server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def runner_endpoints(port: int | None, worker: str, db: str, postgres: str | None,
                     names: Sequence[str] | None = None, *,
                     settings: Settings) -> Callable[[], None]:
    """`crmsync run WORKER`'s endpoints when a port is configured (`port`, else
    CRMSYNC_METRICS_PORT; 0 or neither: nothing). Readiness and the store gauges go through a
    probe engine of the runner's stores; the webhook receivers have none (ready while up).
    Views are gated on lag where projection runners keep them (PostgreSQL)."""
    port = settings.METRICS_PORT if port is None else port
    if not port:
        return lambda: None
    probe = None
    if worker != "webhooks":
        from runners.bootstrap.config import postgres_url
        from runners.services.engine import Engine

        url = postgres_url(postgres, settings)

        def opener() -> Engine:
            if url:
                from runners.bootstrap.config_postgres import open_postgres

                return open_postgres(url, settings)
            return Engine.open_sqlite(db, settings)

        probe = Probe(opener, names=names, gate_lag=url is not None,
                      max_lag=settings.READY_MAX_LAG, timeout=settings.READY_TIMEOUT)
    return serve_probe(port, probe, settings.METRICS_HOST)


def serve_probe(port: int, probe: Probe | None, host: str = "127.0.0.1") -> Callable[[], None]:
    """The endpoints on `port`, with `probe`'s store gauges and readiness (None: ready)."""
    unregister = metrics.register(collector(probe)) if probe is not None else None
    stop_server = start_server(port, probe.ready if probe is not None else None, host)

    def stop() -> None:
        stop_server()
        if unregister is not None:
            unregister()
        if probe is not None:
            probe.close()

    return stop
