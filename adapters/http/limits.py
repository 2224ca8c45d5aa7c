"""The HTTP API's limits: a token bucket per principal on commands (`RateLimit`) and a bounded
request body (`read_body`).
"""

import threading
import time
from collections.abc import Callable

from fastapi import Request

from adapters.http.errors import ApiError

MAX_BODY = 10 * 1024 * 1024


class RateLimit:
    """A token bucket per principal (tenant, user, service) on POST /v1/commands, in this process:
    `rate` commands a second, up to `burst` saved. A request is admitted while the bucket holds
    at least one token and then takes one per command line, possibly into debt, so one large
    batch passes and the next waits until the debt is paid: `take` answers the seconds to wait
    (the 429's Retry-After), 0 when admitted. Several server processes each keep their own."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[tuple[str, str, bool], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[str, str, bool], cost: int) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - cost, now)
            return 0.0


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes: a declared
    Content-Length over the limit before reading anything, a chunked body once the bytes
    received pass it. The rest never reaches the app (uvicorn discards it), so memory stays
    ~`limit` whatever the client sends."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    return bytes(body)


# CRMSYNC_COMMAND_RATE / CRMSYNC_COMMAND_BURST's defaults (runners.bootstrap.settings;
# runners.entrypoints.serve passes the configured limit): commands/s per principal and the burst
DEFAULT_COMMAND_RATE, DEFAULT_COMMAND_BURST = 20.0, 1000.0
UNSET_LIMIT = RateLimit(1, 1)  # placeholder: `create_app` makes a default limit when not given
