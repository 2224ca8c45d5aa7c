"""Tenant affinity for a sync worker (issue #15; the parts: `adapters.deliveries.partitions`).

Two jobs, run by the sync loop between batches:

- `rebalance` (every few seconds): read who is alive (`PartitionLeases.members`), release the
  partitions that are no longer this worker's share, take the ones that are (a lease another
  worker still holds is taken at a later round, once it let go), and read only those. When a
  worker dies its session's leases go with it, the others count one member less at their next
  round and take its partitions: nothing stays orphaned longer than `every` seconds.
- `route`: incoming deliveries (any worker takes them) are forwarded to the partition of each
  tenant they name (a Gmail address in two tenants: two copies, each syncing its tenant's
  mailbox only), then acked. A delivery that names no known mailbox (or cannot be read) goes,
  without a tenant, to a partition chosen by its id, whose worker logs or dead-letters it as
  before.

Affinity is an optimisation only: the mailbox locks and the idempotent decide still make two
workers syncing one tenant safe (E5, E6), e.g. while a partition changes hands.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from adapters.deliveries.partitions import (
    PartitionedWork,
    PartitionLeases,
    assigned,
    partition_of,
)
from adapters.errors import DeliveryStoreError, StoreError

if TYPE_CHECKING:
    from runners.services.sync_worker import SyncWorker

log = structlog.get_logger("crmsync.sync")


class Affinity:
    def __init__(self, queue: PartitionedWork, leases: PartitionLeases, worker: SyncWorker, *,
                 every: float = 1.0, outage_delay: float = 2.0) -> None:
        self.queue, self.leases, self.worker = queue, leases, worker
        self.every, self.outage_delay = every, outage_delay
        self.held: set[int] = set()
        self._due = float("-inf")
        worker.owns = self.owns  # catch-up, IMAP polls and push channels: own tenants only

    def owns(self, tenant: str) -> bool:
        return partition_of(tenant, self.queue.partitions) in self.held

    def rebalance(self) -> None:
        if time.monotonic() < self._due:
            return
        self._due = time.monotonic() + self.every
        try:
            rank, members = self.leases.members()
            want = assigned(rank, members, self.queue.partitions)
            for p in sorted(self.held - want):
                self.leases.release(p)
            held = self.held & want
            held |= {p for p in sorted(want - held) if self.leases.take(p)}
        except StoreError:
            self._hold(set())  # the session is gone, and its leases with it
            self._due = float("-inf")
            raise
        if held != self.held:
            log.info("partitions_assigned", rank=rank, members=members, partitions=sorted(held),
                     waiting_for=sorted(want - held))
        self._hold(held)

    def _hold(self, held: set[int]) -> None:
        self.held = held
        self.queue.own(held)

    async def route(self, limit: int, timeout: float) -> int:
        """Forward up to `limit` incoming deliveries to their partitions; how many there were."""
        batch = await self.queue.fetch_incoming(limit, timeout)
        if not batch:
            return 0
        done = 0
        try:
            self.worker.directory.follow(self.worker.engine)
            for delivery in batch:
                tenants = self.worker.tenants_of(delivery)
                for tenant in tenants:
                    await self.queue.forward(
                        delivery, partition_of(tenant, self.queue.partitions), tenant)
                if not tenants:
                    await self.queue.forward(
                        delivery, partition_of(delivery.delivery_id, self.queue.partitions),
                        None)
                await self.queue.forwarded(delivery)
                done += 1
        except Exception:
            for delivery in batch[done:]:  # back now, not after the ack wait
                try:
                    await self.queue.retry(delivery, self.outage_delay)
                except DeliveryStoreError:
                    break  # NATS is down: they come again after the ack wait
            raise
        return len(batch)

    def leave(self) -> None:
        """Stopping: release every lease now, so the others take over at their next round."""
        self._hold(set())
        self.leases.close()
