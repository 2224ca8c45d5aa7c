"""One contract for the partitioned work queue (tenant affinity, issue #15): the fake and real
JetStream. Two workers' queues on one server: deliveries come in through the webhook inbox, are
forwarded to tenant partitions, and each worker reads only the partitions it owns. Unique stream
names per test (other runs share the NATS server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from nats_streams import drop_streams
from sync_fakes import FakeBroker, FakePartitionedWork

from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.partitions import PartitionedWork
from adapters.deliveries.work_jetstream_parts import JetStreamPartitioned

pytestmark = pytest.mark.integration

Publish = Callable[[str, str, bytes], Awaitable[None]]
Made = tuple[PartitionedWork, PartitionedWork, Publish, Callable[[], Awaitable[None]]]
Scenario = Callable[[PartitionedWork, PartitionedWork, Publish], Awaitable[None]]


@pytest.fixture(params=["fake", "jetstream"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[], Made]]:
    kind = request.param
    nats_url = request.getfixturevalue("nats_url") if kind == "jetstream" else ""
    name = f"T{uuid.uuid4().hex[:10]}"
    prefix = f"t{uuid.uuid4().hex[:10]}.hooks"

    def made() -> Made:
        if kind == "fake":
            broker = FakeBroker(4)
            a, b = FakePartitionedWork(broker), FakePartitionedWork(broker)

            async def none() -> None:
                pass

            return a, b, a.publish, none
        inbox = JetStreamInbox(nats_url, stream=name, subject_prefix=prefix)
        a, b = (JetStreamPartitioned(nats_url, partitions=4, stream=name, subject_prefix=prefix,
                                     durable="w", ack_wait=30) for _ in range(2))
        return a, b, inbox.store, inbox.close

    yield made
    if kind == "jetstream":
        asyncio.run(drop_streams(nats_url, name, f"{name}_DEAD", f"{name}_PART"))


def drive(make: Callable[[], Made], scenario: Scenario) -> None:
    async def main() -> None:
        a, b, publish, close_inbox = make()
        try:
            await scenario(a, b, publish)
        finally:
            await a.close()
            await b.close()
            await close_inbox()

    asyncio.run(main())


async def fetch_all(queue: PartitionedWork, want: int) -> list[tuple[str, str | None]]:
    got: list[tuple[str, str | None]] = []
    for _ in range(30):
        for d in await queue.fetch(10, 0.2):
            got.append((d.delivery_id, d.tenant))
            await queue.ack(d)
        if len(got) >= want:
            break
    return sorted(got, key=lambda x: (x[0], x[1] or ""))


def test_forwarded_deliveries_reach_only_their_partitions_owner(make: Callable[[], Made]
                                                                ) -> None:
    async def scenario(a: PartitionedWork, b: PartitionedWork, publish: Publish) -> None:
        a.own({0, 1})
        b.own({2, 3})
        for i in range(3):
            await publish("gmail", f"gmail:{i}", b'{"n": %d}' % i)
        incoming = await a.fetch_incoming(10, 3.0)
        assert [d.delivery_id for d in incoming] == ["gmail:0", "gmail:1", "gmail:2"]
        assert await b.fetch_incoming(10, 0.3) == []  # in flight at a
        d0, d1, d2 = incoming
        await a.forward(d0, 0, "acme")
        await a.forward(d1, 2, "globex")
        await a.forward(d2, 1, "acme")  # an address in two tenants: a copy for each
        await a.forward(d2, 3, "globex")
        await a.forward(d2, 3, "globex")  # forwarded again (a crash before the ack): deduped
        await a.forward(d1, 2, None)  # no tenant known: a copy without one
        for d in incoming:
            await a.forwarded(d)
        assert await a.fetch_incoming(10, 0.3) == []
        assert await fetch_all(a, 2) == [("gmail:0", "acme"), ("gmail:2", "acme")]
        assert await fetch_all(b, 3) == [("gmail:1", None), ("gmail:1", "globex"),
                                         ("gmail:2", "globex")]
        assert await a.fetch(10, 0.3) == [] and await b.fetch(10, 0.3) == []

    drive(make, scenario)


def test_a_partition_is_read_by_whoever_owns_it_now_and_retries_stay_in_it(
        make: Callable[[], Made]) -> None:
    async def scenario(a: PartitionedWork, b: PartitionedWork, publish: Publish) -> None:
        a.own({0})
        b.own(set())
        await publish("graph", "graph:x", b"{}")
        (d,) = await a.fetch_incoming(10, 3.0)
        await a.forward(d, 3, "acme")
        await a.ack(d)
        assert await a.fetch(10, 0.3) == []  # nobody owns partition 3: it waits
        b.own({3})  # its next owner (a worker died, another took over)
        (got,) = await b.fetch(10, 3.0)
        assert (got.delivery_id, got.tenant, got.provider, got.payload, got.attempts) == (
            "graph:x", "acme", "graph", b"{}", 1)
        await b.retry(got, 0.3)
        again: list = []
        for _ in range(20):
            again = await b.fetch(10, 0.3)
            if again:
                break
        assert [(x.delivery_id, x.tenant) for x in again] == [("graph:x", "acme")]
        # NATS's delivery count: nats-server 2.9 may report a redelivery one lower when it first
        # went to a pull request that had just expired (seen under load: consumer sequence 2,
        # delivered 1), so a retry is only said to be counted as no fewer than the first try
        assert again[0].attempts in (1, 2)
        await b.ack(again[0])
        assert await a.fetch(10, 0.2) == []

    drive(make, scenario)
