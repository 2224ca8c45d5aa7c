"""Tenant affinity for the sync workers (issue #15): deliveries partitioned by tenant, so that
one worker folds a tenant's state instead of every worker folding every tenant.

- `partition_of`: a stable hash of the tenant (BLAKE2b, never Python's salted `hash()`: every
  process, and every version, must put a tenant in the same partition).
- `assigned`: worker `rank` of `members` live workers wants the partitions p with
  p % members == rank.
- `PartitionedWork`: the work-queue port with partitions. Webhooks still arrive on the shared
  incoming subjects (the receiver knows mailboxes, not tenants); any worker takes them
  (`fetch_incoming`), names their tenant from its mail directory and `forward`s them to the
  tenant's partition; `fetch` then reads only the partitions this worker `own`s.
- `PartitionLeases`: who owns which partition, among the workers alive now. A lease dies with
  its process, so a dead worker's partitions are taken by the others at their next rebalance.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from adapters.deliveries.work_queue import Delivery, WorkQueue

DEFAULT_PARTITIONS = 16


def partition_of(key: str, partitions: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def assigned(rank: int, members: int, partitions: int) -> set[int]:
    """The partitions worker `rank` (0-based) of `members` wants."""
    return {p for p in range(partitions) if p % max(1, members) == rank}


class PartitionedWork(WorkQueue, Protocol):
    partitions: int

    async def fetch_incoming(self, limit: int, timeout: float) -> list[Delivery]:
        """Deliveries not yet forwarded to a partition (acked with `ack` once forwarded)."""
        ...

    async def forward(self, delivery: Delivery, partition: int, tenant: str | None) -> None:
        """Durable in `partition` once it returns, carrying `tenant` (None: no tenant known —
        the partition's worker handles it as an unpartitioned delivery). Forwarding the same
        delivery for the same tenant again within the duplicate window stores nothing new."""
        ...

    async def forwarded(self, delivery: Delivery) -> None:
        """Acknowledge an incoming delivery once `forward`ed: as `ack`, but it may be sent
        without waiting for a confirmation (a lost one only makes one more `forward`)."""
        ...

    def own(self, partitions: set[int]) -> None:
        """`fetch` reads these partitions from now on."""
        ...


class PartitionLeases(Protocol):
    def members(self) -> tuple[int, int]:
        """(this worker's rank, the number of live workers); joins on first use."""
        ...

    def take(self, partition: int) -> bool:
        """True when this worker holds the partition now (False: another one does)."""
        ...

    def release(self, partition: int) -> None: ...

    def close(self) -> None:
        """Leave: every lease is released (as when the process dies)."""
        ...
