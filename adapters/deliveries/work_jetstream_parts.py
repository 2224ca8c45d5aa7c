"""The partitioned work queue on NATS JetStream (`adapters.deliveries.partitions`, issue #15).

Incoming deliveries stay where the receiver puts them (`<prefix>.<provider>` in the webhook
stream, read through the shared durable consumer as before — so deliveries queued by an earlier
version are simply forwarded, nothing to drain by hand). Forwarded ones go to a stream of their
own, `<stream>_PART`, subjects `<prefix>_part.<partition>.<provider>` (never overlapping the
webhook and dead-letter subjects, as JetStream requires), work-queue retention (an acked
delivery is deleted), one durable consumer per partition, `<durable>-p<partition>`. Headers:
`Crmsync-Delivery-Id` (the original id), `Crmsync-Tenant` (percent-encoded), and `Nats-Msg-Id`
`part:<tenant>:<delivery id>`, so a worker that dies between forwarding and acking the
incoming delivery forwards nothing twice within the duplicate window (twice the ack wait, at
least 120 s; after it a second copy only syncs from the stored cursor again: E5).

`fetch` asks the stream which owned partitions hold deliveries (one request: an idle worker does
not pull from each of its partitions every poll) and reads those together, a share of `limit`
each. Incoming deliveries, once forwarded, are acked without waiting for the confirmation
(`forwarded`): a lost ack only makes one more forward, which the duplicate window drops.
Retries, dead letters and replays are the base class's: a NAK goes back to the partition's
consumer, a replay back to the incoming subjects (and is forwarded again).
"""

from __future__ import annotations

import asyncio
import math
from urllib.parse import quote

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from adapters.deliveries.delivery_ids import check_provider
from adapters.deliveries.inbox_jetstream import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, MAX_AGE
from adapters.deliveries.work_jetstream import (
    DEFAULT_DURABLE,
    DELIVERY_HEADER,
    TENANT_HEADER,
    JetStreamWork,
    _describe,
    _header,
)
from adapters.deliveries.work_queue import Delivery
from adapters.errors import DeliveryStoreError


class JetStreamPartitioned(JetStreamWork):
    def __init__(self, url: str, *, partitions: int, stream: str = DEFAULT_STREAM,
                 subject_prefix: str = DEFAULT_SUBJECT_PREFIX, durable: str = DEFAULT_DURABLE,
                 ack_wait: float = 120.0, timeout: float = 5.0) -> None:
        super().__init__(url, stream=stream, subject_prefix=subject_prefix, durable=durable,
                         ack_wait=ack_wait, timeout=timeout)
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = partitions
        self.part_stream, self.part_prefix = f"{self.stream}_PART", f"{self.prefix}_part"
        self.owned: set[int] = set()
        self._parts: dict[int, JetStreamContext.PullSubscription] = {}

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        await super()._ensure_streams(js)
        try:
            await js.stream_info(self.part_stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(
                name=self.part_stream, subjects=[f"{self.part_prefix}.>"],
                retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                duplicate_window=max(120.0, 2 * self.ack_wait), max_age=MAX_AGE,
                description="crmsync deliveries by tenant partition"))

    def own(self, partitions: set[int]) -> None:
        self.owned = {p for p in partitions if 0 <= p < self.partitions}

    async def fetch_incoming(self, limit: int, timeout: float) -> list[Delivery]:
        return await super().fetch(limit, timeout)

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        waiting = await self._waiting()
        if not waiting:  # one request instead of a pull per owned partition
            await asyncio.sleep(timeout)
            return []
        share = max(1, math.ceil(limit / len(waiting)))
        subs = [await self._part(p) for p in waiting]
        found = await asyncio.gather(*(self._pull(sub, share, timeout) for sub in subs))
        return [d for batch in found for d in batch]

    async def _waiting(self) -> list[int]:
        """The owned partitions holding deliveries (work-queue retention: acked ones are gone,
        so this counts the waiting, the in-flight and the retried ones)."""
        if not self.owned:
            return []
        js = await self._jetstream()
        try:
            info = await js.stream_info(self.part_stream, subjects_filter=f"{self.part_prefix}.>")
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream {self.part_stream}: {_describe(exc)}") from exc
        found = {int(subject[len(self.part_prefix) + 1:].split(".", 1)[0])
                 for subject, count in (info.state.subjects or {}).items() if count}
        return sorted(found & self.owned)

    async def _part(self, partition: int) -> JetStreamContext.PullSubscription:
        if partition not in self._parts:
            self._parts[partition] = await self._consumer(
                f"{self.part_prefix}.{partition}.>", f"{self.durable}-p{partition}",
                self.part_stream)
        return self._parts[partition]

    async def forward(self, delivery: Delivery, partition: int, tenant: str | None) -> None:
        js = await self._jetstream()
        headers = {"Nats-Msg-Id": _header(f"part:{tenant or ''}:{delivery.delivery_id}", 512),
                   DELIVERY_HEADER: delivery.delivery_id}
        if tenant is not None:
            headers[TENANT_HEADER] = quote(tenant, safe="")  # any tenant id in a header
        subject = f"{self.part_prefix}.{partition}.{check_provider(delivery.provider)}"
        try:
            await js.publish(subject, delivery.payload, stream=self.part_stream,
                             headers=headers, timeout=self.timeout)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream forward to {subject}: "
                                     f"{_describe(exc)}") from exc

    async def forwarded(self, delivery: Delivery) -> None:
        msg: Msg = delivery.handle
        try:
            await msg.ack()  # unconfirmed: a lost ack only forwards it again, deduplicated
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise DeliveryStoreError(f"JetStream ack: {_describe(exc)}") from exc

    async def close(self) -> None:
        self._parts = {}
        await super().close()
