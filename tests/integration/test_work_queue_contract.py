"""One contract for the sync workers' work queue: the fake, the SQLite inbox and real JetStream.

Deliveries come in through each backend's own webhook inbox (JetStreamInbox / SqliteInbox), as
in production. Unique stream names per test (other runs share the NATS server)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sync_fakes import FakeWorkQueue

from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.deliveries.work_jetstream import JetStreamWork
from adapters.deliveries.work_queue import WorkQueue
from adapters.deliveries.work_sqlite import SqliteWork

pytestmark = pytest.mark.integration

Publish = Callable[[str, str, bytes], Awaitable[None]]
Made = tuple[WorkQueue, Publish, Callable[[], Awaitable[None]]]
Backend = tuple[str, Callable[[], Made]]


@pytest.fixture(params=["fake", "sqlite", "jetstream"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "jetstream":
        nats_url = request.getfixturevalue("nats_url")
    name = f"T{uuid.uuid4().hex[:10]}"
    prefix = f"t{uuid.uuid4().hex[:10]}.hooks"
    streams: list[str] = []

    def make() -> Made:
        if kind == "fake":
            fake = FakeWorkQueue()

            async def none() -> None:
                pass

            return fake, fake.publish, none
        if kind == "sqlite":
            path = str(tmp_path / "inbox.db")
            inbox = SqliteInbox(path)
            work = SqliteWork(path, lease=60)

            async def deliver_sqlite(provider: str, delivery_id: str, payload: bytes) -> None:
                await inbox.deliver(provider, delivery_id, payload)

            return work, deliver_sqlite, inbox.close
        jinbox = JetStreamInbox(nats_url, stream=name, subject_prefix=prefix)
        jwork = JetStreamWork(nats_url, stream=name, subject_prefix=prefix, durable="w",
                              ack_wait=30)
        streams.extend([name, f"{name}_DEAD"])

        async def deliver_js(provider: str, delivery_id: str, payload: bytes) -> None:
            await jinbox.deliver(provider, delivery_id, payload)

        return jwork, deliver_js, jinbox.close

    yield kind, make
    if streams:
        import nats

        async def cleanup() -> None:
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            for stream in streams:
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
            await nc.close()

        asyncio.run(cleanup())


def drive(backend: Backend, scenario: Callable[[WorkQueue, Publish], Awaitable[None]]) -> None:
    _, make = backend

    async def main() -> None:
        queue, publish, close_inbox = make()
        try:
            await scenario(queue, publish)
        finally:
            await queue.close()
            await close_inbox()

    asyncio.run(main())


def test_deliveries_come_in_order_once_and_acked_ones_never_again(backend: Backend) -> None:
    async def scenario(queue: WorkQueue, publish: Publish) -> None:
        for i in range(3):
            await publish("gmail", f"gmail:{i}", b'{"n": %d}' % i)
        first = await queue.fetch(10, 3.0)
        assert [d.delivery_id for d in first] == ["gmail:0", "gmail:1", "gmail:2"]
        assert all(d.attempts == 1 and d.provider == "gmail" for d in first)
        assert first[1].payload == b'{"n": 1}'
        for d in first:
            await queue.ack(d)
        assert await queue.fetch(10, 0.5) == []

    drive(backend, scenario)


def test_retry_comes_back_after_the_delay_with_one_more_attempt(backend: Backend) -> None:
    async def scenario(queue: WorkQueue, publish: Publish) -> None:
        await publish("graph", "graph:abc", b"{}")
        (d,) = await queue.fetch(10, 3.0)
        await queue.retry(d, 0.5)
        again: list = []
        for _ in range(20):
            again = await queue.fetch(10, 0.5)
            if again:
                break
        assert [(x.delivery_id, x.attempts, x.provider) for x in again] == [
            ("graph:abc", 2, "graph")]
        await queue.ack(again[0])

    drive(backend, scenario)


def test_dead_letter_is_listed_once_and_replay_puts_it_back(backend: Backend) -> None:
    async def scenario(queue: WorkQueue, publish: Publish) -> None:
        await publish("gmail", "gmail:dead", b'{"x": 1}')
        (d,) = await queue.fetch(10, 3.0)
        first = await queue.put_dead_letter(d, tenant="acme", mailbox="mbx", error="boom\nline")
        second = await queue.put_dead_letter(d, tenant="acme", mailbox="mbx", error="boom")
        assert first == second  # a crash between dead-lettering and acking makes no second one
        await queue.ack(d)
        (dead,) = await queue.dead_letters()
        assert (dead.id, dead.provider, dead.delivery_id, dead.tenant, dead.mailbox,
                dead.attempts) == (first, "gmail", "gmail:dead", "acme", "mbx", 1)
        assert dead.error.startswith("boom")
        assert await queue.fetch(10, 0.3) == []
        replayed = await queue.replay(first)
        assert replayed.delivery_id == "gmail:dead"
        assert await queue.dead_letters() == []
        back = await queue.fetch(10, 3.0)
        assert [(x.delivery_id, x.payload) for x in back] == [("gmail:dead", b'{"x": 1}')]
        await queue.ack(back[0])
        with pytest.raises(KeyError):
            await queue.replay(first)

    drive(backend, scenario)


def test_an_unacked_delivery_is_not_handed_to_a_second_fetch(backend: Backend) -> None:
    async def scenario(queue: WorkQueue, publish: Publish) -> None:
        await publish("gmail", "gmail:1", b"{}")
        (d,) = await queue.fetch(10, 3.0)
        assert await queue.fetch(10, 0.3) == []  # in flight
        await queue.ack(d)

    drive(backend, scenario)

