"""Webhook deliveries made durable in a NATS JetStream stream (production mode).

Each accepted delivery is published to `<subject_prefix>.<provider>` in the stream (created on
first use when missing, file storage, `<subject_prefix>.>`), with header `Nats-Msg-Id` = the
delivery's dedup id. `deliver` returns only after the stream's publish ack, so nothing is
acknowledged to the provider that JetStream has not stored; a publish the stream recognises as a
duplicate (same Msg-Id within its duplicate window) returns False. Every NATS failure becomes
`DeliveryStoreError`.

Dedup window and pruning: JetStream drops a Msg-Id from its dedup memory after the stream's
`duplicate_window` (120 s: the providers' quick retries), and a message from the stream after
its `max_age` (default 7 days, Pub/Sub's longest retention; acknowledged messages are not
deleted by the limits-retention stream, so without it the stream grows for ever). A stream we
find without a max age (made by an earlier version) gets ours once, logged.

The connection is opened lazily on the first delivery, in the event loop that uses it (uvicorn's),
and closed by `close()` in that same loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from adapters.deliveries.delivery_ids import check_delivery_id, check_provider
from adapters.deliveries.model import WebhookDelivery, encode
from adapters.errors import DeliveryStoreError

DEFAULT_STREAM = "CRMSYNC_WEBHOOKS"
DEFAULT_SUBJECT_PREFIX = "crmsync.webhooks"
MAX_AGE = 7 * 24 * 3600.0  # seconds a delivery stays in the stream
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
log = structlog.get_logger("crmsync.jetstream_inbox")


class JetStreamInbox:
    """The delivery port on JetStream (see the module docstring)."""

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM,
                 subject_prefix: str = DEFAULT_SUBJECT_PREFIX, duplicate_window: float = 120.0,
                 max_age: float = MAX_AGE, timeout: float = 5.0) -> None:
        if not _TOKEN.fullmatch(stream):
            raise ValueError(f"not a stream name: {stream!r}")
        if not all(_TOKEN.fullmatch(part) for part in subject_prefix.split(".")):
            raise ValueError(f"not a subject prefix: {subject_prefix!r}")
        self.url, self.stream, self.subject_prefix = url, stream, subject_prefix
        self.duplicate_window, self.timeout = duplicate_window, timeout
        self.max_age = max_age
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock: asyncio.Lock | None = None

    def subject(self, provider: str) -> str:
        return f"{self.subject_prefix}.{check_provider(provider)}"

    async def deliver(self, delivery: WebhookDelivery) -> bool:
        return await self.store(delivery.provider, delivery.delivery_id, encode(delivery))

    async def store(self, provider: str, delivery_id: str, payload: bytes) -> bool:
        """Store `payload` durably; True when new, False when the stream already had the id."""
        subject = self.subject(provider)
        check_delivery_id(delivery_id)
        js = await self._jetstream()
        try:
            ack = await js.publish(subject, payload, timeout=self.timeout, stream=self.stream,
                                   headers={"Nats-Msg-Id": delivery_id})
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream publish to {subject} failed: "
                                     f"{_describe(exc)}") from exc
        return not ack.duplicate

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except (nats.errors.Error, OSError, TimeoutError):
                await nc.close()

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._js is None or self._nc is None or self._nc.is_closed:
                self._nc, self._js = await self._connect()
            return self._js

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        try:
            # Few reconnect attempts: nats-py applies them to the first connect too, and a
            # provider's request must not wait long; a closed client is reopened on next use.
            nc = await nats.connect(self.url, connect_timeout=self.timeout,
                                    allow_reconnect=True, max_reconnect_attempts=1,
                                    reconnect_time_wait=1, error_cb=_on_error,
                                    disconnected_cb=_on_disconnected)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"cannot connect to NATS at {self.url}: "
                                     f"{_describe(exc)}") from exc
        try:
            js = nc.jetstream(timeout=self.timeout)
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        return nc, js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        wanted = f"{self.subject_prefix}.>"
        try:
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                # Two processes may create it together: an identical config is accepted twice.
                info = await js.add_stream(StreamConfig(
                    name=self.stream, subjects=[wanted], storage=StorageType.FILE,
                    duplicate_window=self.duplicate_window, max_age=self.max_age,
                    description="crmsync webhook deliveries"))
                log.info("stream_created", stream=self.stream, subjects=[wanted])
            if not info.config.max_age:  # made without one (the workers, an earlier version)
                info.config.max_age = self.max_age
                info = await js.update_stream(info.config)
                log.info("stream_max_age_set", stream=self.stream, max_age=self.max_age)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream stream {self.stream}: {_describe(exc)}") from exc
        if wanted not in (info.config.subjects or []):
            raise DeliveryStoreError(f"JetStream stream {self.stream} exists without subjects "
                                     f"{wanted} (it has {info.config.subjects})")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _on_error(exc: Exception) -> None:
    log.warning("nats_error", error=_describe(exc))


async def _on_disconnected(*_: Any) -> None:
    log.info("nats_disconnected")  # also on close; failures show as publish errors
