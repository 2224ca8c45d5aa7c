"""One contract for the webhook delivery port, run against both adapters: JetStream (real NATS)
and the SQLite inbox. Each test runs in one event loop (the NATS client is bound to its loop)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats_streams import drop_streams

from adapters.deliveries.inbox import DeliveryInbox
from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.inbox_sqlite import SqliteInbox
from adapters.deliveries.model import GmailPush, GraphLifecycle, decode, encode
from adapters.errors import DeliveryStoreError

pytestmark = pytest.mark.integration

Stored = list[tuple[str, str, bytes]]  # (provider, delivery id, payload) in the order stored
ReadBack = Callable[[], Awaitable[Stored]]


@dataclass
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[tuple[DeliveryInbox, ReadBack]]]
    broken: Callable[[], DeliveryInbox]  # an inbox whose store is unavailable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def read_stream(url: str, stream: str) -> Stored:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        stored: Stored = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            assert msg.subject is not None and msg.headers is not None
            stored.append((msg.subject.rsplit(".", 1)[1], msg.headers["Nats-Msg-Id"],
                           msg.data or b""))
        return stored
    finally:
        await nc.close()


def jetstream_backend(url: str) -> Backend:
    @asynccontextmanager
    async def open_() -> AsyncIterator[tuple[DeliveryInbox, ReadBack]]:
        tag = uuid.uuid4().hex[:12]
        stream = f"T_{tag}"
        inbox = JetStreamInbox(url, stream=stream, subject_prefix=f"t{tag}.webhooks",
                               timeout=5)
        try:
            yield inbox, lambda: read_stream(url, stream)
        finally:
            await inbox.close()
            await drop_streams(url, stream)

    return Backend("jetstream", open_, lambda: JetStreamInbox(
        f"nats://127.0.0.1:{free_port()}", stream="T_unreachable", timeout=1))


def sqlite_backend(tmp: Path) -> Backend:
    @asynccontextmanager
    async def open_() -> AsyncIterator[tuple[DeliveryInbox, ReadBack]]:
        inbox = SqliteInbox(str(tmp / f"{uuid.uuid4().hex}.webhooks.db"))

        async def read() -> Stored:
            return [(d.provider, d.delivery_id, d.payload) for d in await inbox.pending(1000)]

        try:
            yield inbox, read
        finally:
            await inbox.close()

    def broken() -> DeliveryInbox:
        inbox = SqliteInbox(str(tmp / "broken.db"))
        inbox._conn.close()  # the store went away under the inbox
        return inbox

    return Backend("sqlite", open_, broken)


@pytest.fixture(params=["jetstream", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "jetstream":
        yield jetstream_backend(request.getfixturevalue("nats_url"))
    else:
        yield sqlite_backend(tmp_path)


def run(backend: Backend, scenario: Callable[[DeliveryInbox, ReadBack], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as (inbox, read):
            await scenario(inbox, read)

    asyncio.run(main())


def test_a_delivery_is_stored_with_its_provider_id_and_payload(backend: Backend) -> None:
    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        assert await inbox.store("gmail", "gmail:1", b'{"history_id": 1}') is True
        assert await read() == [("gmail", "gmail:1", b'{"history_id": 1}')]

    run(backend, scenario)


def test_a_typed_delivery_is_stored_in_its_stored_form_under_its_provider_and_id(
        backend: Backend) -> None:
    push = GmailPush(delivery_id="gmail:7", subscription="s", email_address="mia@acme.test",
                     history_id=7)
    lifecycle = GraphLifecycle(delivery_id="graph:l1", subscription_id="sub-1",
                               client_state_ok=True, lifecycle_event="missed")

    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        assert await inbox.deliver(push) is True
        assert await inbox.deliver(lifecycle) is True
        assert await inbox.deliver(push) is False
        stored = await read()
        assert stored == [("gmail", "gmail:7", encode(push)),
                          ("graph", "graph:l1", encode(lifecycle))]
        assert [decode(provider, payload) for provider, _, payload in stored] == [
            push, lifecycle]

    run(backend, scenario)


def test_the_same_delivery_id_again_is_a_duplicate_and_stored_once(backend: Backend) -> None:
    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        assert await inbox.store("graph", "graph:abc", b"first") is True
        assert await inbox.store("graph", "graph:abc", b"second") is False
        assert await inbox.store("graph", "graph:abc", b"first") is False
        assert await read() == [("graph", "graph:abc", b"first")]

    run(backend, scenario)


def test_distinct_deliveries_are_all_stored_in_order(backend: Backend) -> None:
    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        sent = [("gmail", f"gmail:{n}", f"payload {n}".encode()) for n in range(5)]
        sent.append(("graph", "graph:0", b""))
        for provider, delivery_id, payload in sent:
            assert await inbox.store(provider, delivery_id, payload) is True
        assert await read() == sent

    run(backend, scenario)


def test_concurrent_deliveries_of_one_id_store_it_once(backend: Backend) -> None:
    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        results = await asyncio.gather(*(inbox.store("gmail", "gmail:race", b"x")
                                         for _ in range(10)))
        assert sorted(results) == [False] * 9 + [True]
        assert await read() == [("gmail", "gmail:race", b"x")]

    run(backend, scenario)


@pytest.mark.parametrize(("provider", "delivery_id"), [
    ("Gmail", "gmail:1"), ("gm.ail", "gmail:1"), ("", "gmail:1"), ("gmail>", "gmail:1"),
    ("gmail", ""), ("gmail", "gmail: 1"), ("gmail", "gmail:1\r\nX: y"), ("gmail", "x" * 513),
])
def test_bad_provider_names_and_delivery_ids_are_refused(backend: Backend, provider: str,
                                                         delivery_id: str) -> None:
    async def scenario(inbox: DeliveryInbox, read: ReadBack) -> None:
        with pytest.raises(ValueError):
            await inbox.store(provider, delivery_id, b"x")
        assert await inbox.store("gmail", "gmail:ok", b"x") is True
        assert await read() == [("gmail", "gmail:ok", b"x")]

    run(backend, scenario)


def test_an_unavailable_store_is_a_delivery_store_error(backend: Backend) -> None:
    async def main() -> None:
        inbox = backend.broken()
        try:
            with pytest.raises(DeliveryStoreError):
                await inbox.store("gmail", "gmail:1", b"x")
        finally:
            await inbox.close()

    asyncio.run(main())


# -- adapter-specific --------------------------------------------------------------------------
def test_sqlite_inbox_is_durable_and_marks_deliveries_processed(tmp_path: Path) -> None:
    path = str(tmp_path / "inbox.db")

    async def first() -> None:
        inbox = SqliteInbox(path)
        for n in range(3):
            assert await inbox.store("gmail", f"gmail:{n}", f"{n}".encode())
        await inbox.close()

    async def second() -> None:
        inbox = SqliteInbox(path)  # reopened: nothing was lost
        pending = await inbox.pending()
        assert [d.delivery_id for d in pending] == ["gmail:0", "gmail:1", "gmail:2"]
        assert {d.status for d in pending} == {"pending"}
        assert all(d.received_at.endswith("+00:00") for d in pending)
        assert await inbox.mark_processed(["gmail:0", "gmail:2", "gmail:unknown"]) == 2
        assert await inbox.mark_processed(["gmail:0"]) == 0
        assert [d.delivery_id for d in await inbox.pending()] == ["gmail:1"]
        assert await inbox.pending(provider="graph") == []
        # processed deliveries still deduplicate
        assert await inbox.store("gmail", "gmail:0", b"again") is False
        await inbox.close()

    asyncio.run(first())
    asyncio.run(second())
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT delivery_id, status, processed_at IS NOT NULL "
                            "FROM webhook_inbox ORDER BY delivery_id").fetchall()
    assert rows == [("gmail:0", "processed", 1), ("gmail:1", "pending", 0),
                    ("gmail:2", "processed", 1)]


def test_sqlite_inbox_in_a_missing_directory_is_a_delivery_store_error(tmp_path: Path) -> None:
    with pytest.raises(DeliveryStoreError):
        SqliteInbox(str(tmp_path / "missing" / "inbox.db"))


def test_jetstream_refuses_an_existing_stream_without_our_subjects(nats_url: str) -> None:
    stream = f"T_{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().add_stream(name=stream, subjects=[f"other{stream}.>"])
        await nc.close()
        inbox = JetStreamInbox(nats_url, stream=stream, subject_prefix=f"t{stream}")
        try:
            with pytest.raises(DeliveryStoreError, match="without subjects"):
                await inbox.store("gmail", "gmail:1", b"x")
        finally:
            await inbox.close()
            await drop_streams(nats_url, stream)

    asyncio.run(main())


def test_jetstream_creates_its_stream_with_the_duplicate_window(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:12]
    stream = f"T_{tag}"

    async def main() -> None:
        inbox = JetStreamInbox(nats_url, stream=stream, subject_prefix=f"t{tag}.hooks",
                               duplicate_window=30)
        try:
            assert await inbox.store("gmail", "gmail:1", b"x")
            nc = await nats.connect(nats_url)
            info = await nc.jetstream().stream_info(stream)
            await nc.close()
            assert info.config.subjects == [f"t{tag}.hooks.>"]
            assert info.config.duplicate_window == 30
            assert getattr(info.config.storage, "value", info.config.storage) == "file"
        finally:
            await inbox.close()
            await drop_streams(nats_url, stream)

    asyncio.run(main())
