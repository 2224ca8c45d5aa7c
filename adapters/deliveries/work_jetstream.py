"""The work-queue port on NATS JetStream (production mode).

The webhook stream (`CRMSYNC_WEBHOOKS`, subjects `<prefix>.<provider>`, filled by
`jetstream_inbox.JetStreamInbox`) is read by a durable pull consumer shared by every sync worker
process (explicit acks, `ack_wait`, unlimited deliveries: the worker counts attempts from the
message's delivery count and dead-letters itself). `retry` is a NAK with a delay; `ack` is sent
after the delivery's events are durable (a lost ack only means one harmless redelivery), and
confirmed — else sent again as a plain ack, which the client sends once NATS is back.

Dead letters go to a stream of their own (`<stream>_DEAD`, subjects `<prefix>_dead.<provider>`)
with the payload and headers `Crmsync-Delivery-Id`, `-Tenant`, `-Mailbox`, `-Attempts`,
`-Error`, `-At`; their id is the stream sequence. Publishing one is deduplicated by
`Nats-Msg-Id: dead:<delivery id>`, so a worker that dies between dead-lettering and acking does
not make a second one. `replay` publishes the payload to the work stream again (`Nats-Msg-Id:
replay:<seq>:<delivery id>`, header `Crmsync-Delivery-Id` keeping the original id) and deletes
the dead letter. NATS failures become `DeliveryStoreError`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from adapters.deliveries.delivery_ids import check_provider
from adapters.deliveries.inbox_jetstream import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX
from adapters.deliveries.work_queue import DeadLetter, Delivery
from adapters.errors import DeliveryStoreError

DEFAULT_DURABLE = "crmsync-sync"
DELIVERY_HEADER = "Crmsync-Delivery-Id"
TENANT_HEADER = "Crmsync-Tenant"  # of a delivery forwarded to its tenant's partition
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _header(value: str, limit: int = 1000) -> str:
    return _UNSAFE.sub("?", value)[:limit]


class JetStreamWork:
    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM,
                 subject_prefix: str = DEFAULT_SUBJECT_PREFIX, durable: str = DEFAULT_DURABLE,
                 ack_wait: float = 120.0, timeout: float = 5.0) -> None:
        self.url, self.stream, self.prefix, self.durable = url, stream, subject_prefix, durable
        self.dead_stream, self.dead_prefix = f"{stream}_DEAD", f"{subject_prefix}_dead"
        self.ack_wait, self.timeout = ack_wait, timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        try:
            self._nc = await nats.connect(self.url, connect_timeout=self.timeout,
                                          max_reconnect_attempts=-1, reconnect_time_wait=1)
            js = self._nc.jetstream(timeout=self.timeout)
            await self._ensure_streams(js)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream at {self.url}: {_describe(exc)}") from exc
        self._js = js
        return js

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        await self._ensure(js, self.stream, f"{self.prefix}.>", "crmsync webhook deliveries")
        await self._ensure(js, self.dead_stream, f"{self.dead_prefix}.>",
                           "crmsync dead-lettered deliveries")

    async def _ensure(self, js: JetStreamContext, name: str, subject: str, what: str) -> None:
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=name, subjects=[subject],
                                             storage=StorageType.FILE, duplicate_window=120.0,
                                             description=what))

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self._consumer(f"{self.prefix}.>", self.durable, self.stream)
        return self._sub

    async def _consumer(self, subject: str, durable: str, stream: str
                        ) -> JetStreamContext.PullSubscription:
        js = await self._jetstream()
        try:
            return await js.pull_subscribe(
                subject, durable=durable, stream=stream,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                      max_deliver=-1, deliver_policy=DeliverPolicy.ALL))
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream consumer {durable}: "
                                     f"{_describe(exc)}") from exc

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        return await self._pull(await self._subscription(), limit, timeout)

    async def _pull(self, sub: JetStreamContext.PullSubscription, limit: int,
                    timeout: float) -> list[Delivery]:
        try:
            msgs = await sub.fetch(limit, timeout=max(0.05, timeout))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, OSError) as exc:
            raise DeliveryStoreError(f"JetStream fetch: {_describe(exc)}") from exc
        out = []
        for msg in msgs:
            headers = msg.headers or {}
            delivery_id = headers.get(DELIVERY_HEADER) or headers.get("Nats-Msg-Id") or \
                f"seq:{msg.metadata.sequence.stream}"
            provider = msg.subject.rsplit(".", 1)[-1]
            out.append(Delivery(provider, delivery_id, msg.data,
                                int(msg.metadata.num_delivered or 1), msg,
                                tenant=unquote(headers[TENANT_HEADER])
                                if headers.get(TENANT_HEADER) else None))
        return out

    async def ack(self, delivery: Delivery) -> None:
        msg: Msg = delivery.handle
        try:
            await msg.ack_sync(timeout=self.timeout)
            return
        except (nats.errors.Error, OSError, TimeoutError):
            pass
        # No confirmation (NATS restarting, or the reply was lost; a server may not answer the
        # ack of a message it has acked already): a plain ack, which the client keeps while it
        # reconnects and sends then. Should it be lost too, the delivery comes again after the
        # ack wait and changes nothing (E5).
        try:
            await msg.ack()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream ack: {_describe(exc)}") from exc

    async def retry(self, delivery: Delivery, delay: float) -> None:
        msg: Msg = delivery.handle
        try:
            await msg.nak(delay=delay)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream nak: {_describe(exc)}") from exc

    async def put_dead_letter(self, delivery: Delivery, *, tenant: str | None,
                              mailbox: str | None, error: str) -> str:
        js = await self._jetstream()
        headers = {"Nats-Msg-Id": _header(f"dead:{delivery.delivery_id}", 512),
                   DELIVERY_HEADER: delivery.delivery_id,
                   TENANT_HEADER: _header(tenant or ""),
                   "Crmsync-Mailbox": _header(mailbox or ""),
                   "Crmsync-Attempts": str(delivery.attempts),
                   "Crmsync-Error": _header(error), "Crmsync-At": datetime.now(UTC).isoformat()}
        try:
            ack = await js.publish(f"{self.dead_prefix}.{check_provider(delivery.provider)}",
                                   delivery.payload, stream=self.dead_stream, headers=headers,
                                   timeout=self.timeout)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream dead letter: {_describe(exc)}") from exc
        return str(ack.seq)

    async def _dead(self, js: JetStreamContext, seq: int) -> tuple[DeadLetter, bytes] | None:
        try:
            raw = await js.get_msg(self.dead_stream, seq)
        except NotFoundError:
            return None
        h: dict[str, Any] = raw.headers or {}
        provider = (raw.subject or "").rsplit(".", 1)[-1]
        return DeadLetter(str(seq), provider, h.get(DELIVERY_HEADER, ""),
                          h.get("Crmsync-Tenant") or None, h.get("Crmsync-Mailbox") or None,
                          int(h.get("Crmsync-Attempts", "0") or 0), h.get("Crmsync-Error", ""),
                          h.get("Crmsync-At", "")), raw.data or b""

    async def dead_letters(self) -> list[DeadLetter]:
        js = await self._jetstream()
        try:
            info = await js.stream_info(self.dead_stream)
            out = []
            if info.state.messages:
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    found = await self._dead(js, seq)
                    if found is not None:
                        out.append(found[0])
            return out
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream dead letters: {_describe(exc)}") from exc

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        js = await self._jetstream()
        if not dead_letter_id.isdigit():
            raise KeyError(dead_letter_id)
        try:
            found = await self._dead(js, int(dead_letter_id))
            if found is None:
                raise KeyError(dead_letter_id)
            dead, payload = found
            await js.publish(f"{self.prefix}.{check_provider(dead.provider)}", payload,
                             stream=self.stream, timeout=self.timeout,
                             headers={"Nats-Msg-Id": _header(
                                 f"replay:{dead.id}:{dead.delivery_id}", 512),
                                 DELIVERY_HEADER: dead.delivery_id})
            await js.delete_msg(self.dead_stream, int(dead_letter_id))
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream replay: {_describe(exc)}") from exc
        return dead

    async def close(self) -> None:
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            # acks were confirmed (ack_sync); an unacked message is simply redelivered
            await nc.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
