"""Issue #10 point 8: processed webhook deliveries do not stay for ever. The SQLite inbox deletes
processed rows older than its dedup window (bounded batches; an injected clock, no sleeps); the
JetStream stream carries a max age (real NATS, a stream of this test only)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from adapters.deliveries.inbox_jetstream import MAX_AGE, JetStreamInbox
from adapters.deliveries.inbox_sqlite import SqliteInbox

pytestmark = pytest.mark.integration

WINDOW = timedelta(days=7)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def statuses(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT delivery_id, status FROM webhook_inbox"))


def test_e5_processed_rows_are_pruned_after_the_dedup_window_and_pending_ones_kept(
        tmp_path: Path) -> None:
    path, clock = tmp_path / "inbox.db", Clock()
    inbox = SqliteInbox(str(path), clock=clock, dedup_window=WINDOW)

    async def run() -> tuple[int, int, bool, bool]:
        for n in range(5):
            assert await inbox.deliver("gmail", f"gmail:{n}", b"{}")
        assert await inbox.mark_processed(["gmail:0", "gmail:1", "gmail:2"]) == 3
        clock.now += WINDOW - timedelta(seconds=1)
        within = await inbox.prune()
        duplicate_within = await inbox.deliver("gmail", "gmail:0", b"{}")  # still a duplicate
        clock.now += timedelta(seconds=2)
        after = await inbox.prune()
        redelivered = await inbox.deliver("gmail", "gmail:0", b"{}")  # past the window: new
        await inbox.close()
        return within, after, duplicate_within, redelivered

    within, after, duplicate_within, redelivered = asyncio.run(run())
    assert (within, after) == (0, 3)
    assert duplicate_within is False and redelivered is True
    assert statuses(path) == {"gmail:0": "pending", "gmail:3": "pending", "gmail:4": "pending"}


def test_e5_deliveries_prune_one_bounded_batch_at_most_every_interval(tmp_path: Path) -> None:
    path, clock = tmp_path / "inbox.db", Clock()
    inbox = SqliteInbox(str(path), clock=clock, dedup_window=WINDOW, prune_batch=4,
                        prune_every=timedelta(minutes=1))

    async def run() -> list[int]:
        await inbox.deliver("graph", "graph:first", b"{}")  # the first delivery prunes
        for n in range(10):
            await inbox.deliver("graph", f"graph:{n}", b"{}")
        await inbox.mark_processed([f"graph:{n}" for n in range(10)])
        clock.now += WINDOW + timedelta(hours=1)
        left = []
        for n in range(3):  # within one minute: one batch only
            await inbox.deliver("graph", f"graph:new-{n}", b"{}")
            left.append(sum(1 for s in statuses(path).values() if s == "processed"))
        clock.now += timedelta(minutes=1)
        await inbox.deliver("graph", "graph:later", b"{}")
        left.append(sum(1 for s in statuses(path).values() if s == "processed"))
        await inbox.close()
        return left

    assert asyncio.run(run()) == [6, 6, 6, 2]
    pending = {i for i, s in statuses(path).items() if s == "pending"}
    assert pending == {"graph:first", "graph:new-0", "graph:new-1", "graph:new-2", "graph:later"}


def test_e5_the_jetstream_stream_ages_deliveries_out(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:12]
    made, older = f"P_{tag}", f"Q_{tag}"

    async def run() -> tuple[float | None, float | None]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            # a stream made without a max age (the workers, an earlier version)
            await js.add_stream(name=older, subjects=[f"q{tag}.hooks.>"])
            for name, prefix in ((made, f"p{tag}.hooks"), (older, f"q{tag}.hooks")):
                inbox = JetStreamInbox(nats_url, stream=name, subject_prefix=prefix)
                assert await inbox.deliver("gmail", "gmail:1", b"{}")
                await inbox.close()
            return ((await js.stream_info(made)).config.max_age,
                    (await js.stream_info(older)).config.max_age)
        finally:
            for name in (made, older):
                await js.delete_stream(name)
            await nc.close()

    assert asyncio.run(run()) == (MAX_AGE, MAX_AGE)
