"""Dropping the JetStream streams a test made (its own names: other tests' streams stay)."""

from __future__ import annotations

import contextlib

import nats
import nats.js.errors


async def drop_streams(url: str, *streams: str) -> None:
    """Delete each stream that exists; a missing one is fine (the test may have failed early)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for stream in streams:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()
