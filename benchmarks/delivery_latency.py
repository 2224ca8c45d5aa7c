"""Per-delivery latency from webhook accepted to the mail visible in the views (issue #15).

Used by `benchmarks.sync_throughput --rate`: the driver calls `accepted(mailbox, head)` when the
receiver answered 202 for a push that raised the mailbox's head to `head`; a thread polls the
log and the views. A delivery is *durable* when the log holds the mailbox's cursor event at
`head` or beyond (a worker may fold two pushes into one sync: the later cursor covers both),
and *visible* when every projection's position has passed that event (the projection runner
writes rows and positions in one transaction, so the rows are in the views then). The poll
interval bounds the resolution; it is printed beside the figures.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from adapters.views.postgres import PostgresViews


@dataclass
class _Pending:
    head: int
    at: float  # perf_counter when the receiver accepted the push
    durable_at: float | None = None
    position: int = 0  # the covering cursor event's notification id


@dataclass
class Latencies:
    durable: list[float] = field(default_factory=list)  # seconds per delivery
    visible: list[float] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    if not values:
        return "no deliveries"
    return (f"p50 {percentile(values, 50) * 1000:.0f} ms, p90 {percentile(values, 90) * 1000:.0f}"
            f" ms, p99 {percentile(values, 99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
            f"({len(values)} deliveries)")


class DeliveryClock:
    """Times each accepted push until it is durable and then visible (a polling thread)."""

    def __init__(self, url: str, mailbox_of: dict[str, str], every: float = 0.05, *,
                 poll: bool = True) -> None:
        self.url, self.every = url, every
        self.mailbox_of = mailbox_of  # address -> mailbox id (the cursor events name the id)
        self.pending: dict[str, list[_Pending]] = {}
        self.lock = threading.Lock()
        self.result = Latencies()
        self.position = 0
        self.latest: dict[str, tuple[int, int]] = {}  # mailbox -> (cursor, its position)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if poll:  # without: the caller feeds `cursor_seen` and `projected_to` (unit tests)
            self.thread.start()

    def accepted(self, address: str, head: int, at: float | None = None) -> None:
        mailbox = self.mailbox_of[address]
        item = _Pending(head, time.perf_counter() if at is None else at)
        with self.lock:
            cursor, position = self.latest.get(mailbox, (-1, 0))
            if cursor >= head:  # a worker synced the raised head before the push was answered
                item.durable_at, item.position = item.at, position
            self.pending.setdefault(mailbox, []).append(item)

    def outstanding(self) -> int:
        with self.lock:
            return sum(len(p) for p in self.pending.values())

    def stop(self) -> Latencies:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        return self.result

    def cursor_seen(self, mailbox: str, cursor: int, position: int, now: float) -> None:
        """The log holds `mailbox`'s cursor event at `position`: it makes durable every
        pending push of that mailbox whose head it reaches."""
        with self.lock:
            for item in self.pending.get(mailbox, []):
                if item.durable_at is None and cursor >= item.head:
                    item.durable_at, item.position = now, position
            self.latest[mailbox] = (cursor, position)
            self.position = max(self.position, position)

    def projected_to(self, projected: int, now: float) -> None:
        """Every projection has passed `projected`: durable pushes at or before it are visible."""
        with self.lock:
            for mailbox, items in self.pending.items():
                keep = []
                for item in items:
                    if item.durable_at is not None and item.position <= projected:
                        self.result.durable.append(item.durable_at - item.at)
                        self.result.visible.append(now - item.at)
                    else:
                        keep.append(item)
                self.pending[mailbox] = keep

    def _run(self) -> None:
        reader = psycopg.connect(self.url, autocommit=True)
        views = PostgresViews(self.url)
        try:
            while not self.stopping.is_set():
                self._poll(reader, views)
                time.sleep(self.every)
        finally:
            views.close()
            reader.close()

    def _poll(self, reader: psycopg.Connection[Any], views: PostgresViews) -> None:
        rows = reader.execute(
            "SELECT notification_id, state FROM crmsync_events WHERE notification_id > %s "
            "AND topic LIKE %s ORDER BY notification_id",
            (self.position, "%MailboxCursorAdvanced")).fetchall()
        now = time.perf_counter()
        for position, state in rows:
            data = orjson.loads(state)
            self.cursor_seen(data["mailbox"], int(data["cursor"]), int(position), now)
        projected = min(views.positions().values())
        self.projected_to(projected, time.perf_counter())
