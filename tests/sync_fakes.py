"""Hand-written fakes for the sync workers: a provider mailbox with a history and its push channel
(Graph-like subscriptions or a Gmail-like watch), the source factory, and an in-memory work queue
(the same contract as the JetStream and SQLite adapters)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.deliveries.work_queue import DeadLetter, Delivery
from adapters.errors import (
    CredentialsRejected,
    CursorExpired,
    MailboxGone,
    ProviderError,
    ProviderThrottled,
)
from adapters.providers.client import PushSubscription
from adapters.providers.sources import Changes, PushTarget, ResyncPage
from domain.events import MailMessage
from domain.state import Mailbox

NOW = datetime.now(UTC)


def message(i: int, *, days_ago: float = 1.0, thread: str | None = None,
            labels: list[str] | None = None, read: bool = False,
            in_reply_to: str | None = None) -> MailMessage:
    return MailMessage.model_validate({
        "id": f"m{i}", "message_id": f"<m{i}@ext.test>", "thread_id": thread,
        "in_reply_to": in_reply_to, "from": f"sender{i}@ext.test", "to": ["mia@acme.test"],
        "subject": f"message {i}", "body": f"body {i}",
        "sent_at": (NOW - timedelta(days=days_ago)).isoformat(),
        "labels": labels or ["INBOX"], "read": read})


@dataclass
class FakePush:
    """The provider's side of push: Graph-like subscriptions (ids `sub-N`, the expiry asked for)
    or, with `gmail`, a watch (no id, 7 days from `now`, the history length as its history id).
    `dropped`: ids the provider forgot (a renewal answers None)."""

    box: FakeMailbox
    gmail: bool = False
    live: dict[str, PushTarget] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    targets: list[PushTarget] = field(default_factory=list)
    now: datetime = NOW
    made: int = 0

    def subscribe(self, address: str, target: PushTarget) -> PushSubscription:
        self.box._check("subscribe")
        self.made += 1
        ident = None if self.gmail else f"sub-{self.made}"
        self.calls.append(("subscribe", address, ident))
        self.targets.append(target)
        self.live[ident or address] = target
        if self.gmail:
            return PushSubscription(id=None, resource=f"users/{address} topic {target.topic}",
                                    expires_at=self.now + timedelta(days=7),
                                    history_id=len(self.box.history))
        return PushSubscription(id=ident, resource=f"/users/{address}/messages",
                                expires_at=target.expires_at)

    def renew(self, address: str, subscription_id: str | None, target: PushTarget
              ) -> PushSubscription | None:
        self.box._check("renew")
        self.calls.append(("renew", address, subscription_id))
        if self.gmail:
            return self.subscribe(address, target)
        if subscription_id is None or subscription_id in self.dropped \
                or subscription_id not in self.live:
            return None
        self.live[subscription_id] = target
        return PushSubscription(id=subscription_id, resource=f"/users/{address}/messages",
                                expires_at=target.expires_at)

    def unsubscribe(self, address: str, subscription_id: str | None) -> bool:
        self.calls.append(("unsubscribe", address, subscription_id))
        return self.live.pop(subscription_id or address, None) is not None


@dataclass
class FakeMailbox:
    """A provider mailbox: `history` of ("add", msg) / ("delete", id) / ("update", msg); the
    cursor is the history length as text. Cursors below `expired_below` are expired."""

    history: list[tuple[str, Any]] = field(default_factory=list)
    expired_below: int = 0
    gone: bool = False
    failures: int = 0  # the next N calls raise ProviderError
    throttled: float | None = None  # every call raises ProviderThrottled(retry_after=this)
    rejected: bool = False  # every call raises CredentialsRejected (refresh token revoked)
    page_size: int = 1000
    calls: list[str] = field(default_factory=list)

    def add(self, *messages: MailMessage) -> None:
        self.history += [("add", m) for m in messages]

    def delete(self, *ids: str) -> None:
        self.history += [("delete", i) for i in ids]

    def update(self, msg: MailMessage) -> None:
        self.history.append(("update", msg))

    def current(self) -> dict[str, MailMessage]:
        live: dict[str, MailMessage] = {}
        for kind, value in self.history:
            if kind == "delete":
                live.pop(value, None)
            else:
                live[value.id] = value
        return live

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.failures:
            self.failures -= 1
            raise ProviderError("gmail", "fake outage", 503)
        if self.throttled is not None:
            raise ProviderThrottled("gmail", "rate limited", self.throttled, 429)
        if self.rejected:
            raise CredentialsRejected("gmail", "token refresh: 400 invalid_grant: Token has been "
                                      "expired or revoked. (the refresh token was refused: "
                                      "reconnect the mailbox)", 400)
        if self.gone:
            raise MailboxGone("gmail", "account deleted", 404)


class FakeSource:
    def __init__(self, box: FakeMailbox, push: FakePush | None = None) -> None:
        self.box = box
        self.push = push

    def changes(self, address: str, cursor: str) -> Changes:
        self.box._check("changes")
        start = int(cursor)
        if start < self.box.expired_below:
            raise CursorExpired("gmail", "history id too old", 404)
        end = min(len(self.box.history), start + self.box.page_size)
        live = self.box.current()
        added: dict[str, MailMessage] = {}
        deleted: list[str] = []
        for kind, value in self.box.history[start:end]:
            if kind == "delete":
                added.pop(value, None)
                deleted.append(value)
            elif value.id in live:
                added[value.id] = live[value.id]
        return Changes(messages=list(added.values()), deleted_ids=deleted, new_cursor=str(end),
                       more=end < len(self.box.history))

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        self.box._check("resync")
        cursor = str(len(self.box.history))
        inside = sorted((m for m in self.box.current().values() if m.sent_at >= since),
                        key=lambda m: m.sent_at, reverse=True)
        for start in range(0, len(inside), self.box.page_size):
            yield ResyncPage(inside[start:start + self.box.page_size])
        yield ResyncPage([], cursor=cursor)

    def close(self) -> None:
        pass


class FakeSources:
    """Mailbox address -> FakeMailbox; `without_credentials` lists addresses with none."""

    def __init__(self) -> None:
        self.boxes: dict[str, FakeMailbox] = {}
        self.pushes: dict[str, FakePush] = {}  # address -> its push channel
        self.without_credentials: set[str] = set()
        self.opened: list[str] = []

    def box(self, address: str) -> FakeMailbox:
        return self.boxes.setdefault(address, FakeMailbox())

    def push(self, address: str, *, gmail: bool = False) -> FakePush:
        if address not in self.pushes:
            self.pushes[address] = FakePush(self.box(address), gmail=gmail)
        return self.pushes[address]

    def open(self, tenant: str, mailbox: Mailbox) -> FakeSource | None:
        self.opened.append(mailbox.address)
        if mailbox.address in self.without_credentials:
            return None
        return FakeSource(self.box(mailbox.address),
                          self.push(mailbox.address, gmail=mailbox.provider == "gmail"))


class FakeWorkQueue:
    """In memory: deliveries due at a time, attempts counted, dead letters kept."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[str, bytes, int, float]] = {}  # id -> provider, payload,
        # attempts so far, due (monotonic)
        self.dead: dict[str, tuple[DeadLetter, bytes]] = {}
        self.acked: list[str] = []

    async def publish(self, provider: str, delivery_id: str, payload: bytes) -> None:
        self.items.setdefault(delivery_id, (provider, payload, 0, 0.0))

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            due = [(i, v) for i, v in self.items.items() if v[3] <= now][:limit]
            if due or now >= deadline:
                break
            await asyncio.sleep(0.01)
        out = []
        for delivery_id, (provider, payload, attempts, _) in due:
            # in flight: not fetched again until acked or retried (or the ack wait passes)
            self.items[delivery_id] = (provider, payload, attempts + 1, now + 3600)
            out.append(Delivery(provider, delivery_id, payload, attempts + 1, delivery_id))
        return out

    async def ack(self, delivery: Delivery) -> None:
        self.items.pop(delivery.delivery_id, None)
        self.acked.append(delivery.delivery_id)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        provider, payload, attempts, _ = self.items[delivery.delivery_id]
        self.items[delivery.delivery_id] = (provider, payload, attempts,
                                            time.monotonic() + delay)

    async def put_dead_letter(self, delivery: Delivery, *, tenant: str | None,
                              mailbox: str | None, error: str) -> str:
        for key, (dead, _) in self.dead.items():
            if dead.delivery_id == delivery.delivery_id:
                return key
        key = str(len(self.dead) + 1)
        self.dead[key] = (DeadLetter(key, delivery.provider, delivery.delivery_id, tenant,
                                     mailbox, delivery.attempts, error,
                                     datetime.now(UTC).isoformat()), delivery.payload)
        return key

    async def dead_letters(self) -> list[DeadLetter]:
        return [d for d, _ in self.dead.values()]

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        dead, payload = self.dead.pop(dead_letter_id)
        self.items[dead.delivery_id] = (dead.provider, payload, 0, 0.0)
        return dead

    async def close(self) -> None:
        pass


@dataclass
class _Queued:
    provider: str
    delivery_id: str
    payload: bytes
    tenant: str | None = None
    attempts: int = 0
    due: float = 0.0  # monotonic; in flight: an hour ahead


class FakeBroker:
    """The server side of the fake partitioned queues: shared by the workers' queues."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.incoming: dict[str, _Queued] = {}
        self.parts: dict[int, dict[str, _Queued]] = {p: {} for p in range(partitions)}
        self.dead = FakeWorkQueue()


class FakePartitionedWork:
    """A worker's partitioned queue (adapters.deliveries.partitions.PartitionedWork) in memory,
    on a `FakeBroker` shared with the other workers' queues."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker, self.partitions = broker, broker.partitions
        self.owned: set[int] = set()

    async def publish(self, provider: str, delivery_id: str, payload: bytes) -> None:
        self.broker.incoming.setdefault(delivery_id, _Queued(provider, delivery_id, payload))

    async def fetch_incoming(self, limit: int, timeout: float) -> list[Delivery]:
        return await self._take(lambda: [self.broker.incoming], limit, timeout)

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        return await self._take(lambda: [self.broker.parts[p] for p in sorted(self.owned)],
                                limit, timeout)

    async def _take(self, tables: Any, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            due = [(table, key, item) for table in tables() for key, item in table.items()
                   if item.due <= now][:limit]
            if due or now >= deadline:
                break
            await asyncio.sleep(0.01)
        out = []
        for table, key, item in due:
            item.attempts += 1
            item.due = now + 3600
            out.append(Delivery(item.provider, item.delivery_id, item.payload, item.attempts,
                                (table, key), tenant=item.tenant))
        return out

    async def forward(self, delivery: Delivery, partition: int, tenant: str | None) -> None:
        self.broker.parts[partition].setdefault(
            f"{tenant}:{delivery.delivery_id}",
            _Queued(delivery.provider, delivery.delivery_id, delivery.payload, tenant))

    async def forwarded(self, delivery: Delivery) -> None:
        await self.ack(delivery)

    def own(self, partitions: set[int]) -> None:
        self.owned = set(partitions)

    async def ack(self, delivery: Delivery) -> None:
        table, key = delivery.handle
        table.pop(key, None)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        table, key = delivery.handle
        table[key].due = time.monotonic() + delay

    async def put_dead_letter(self, delivery: Delivery, *, tenant: str | None,
                              mailbox: str | None, error: str) -> str:
        return await self.broker.dead.put_dead_letter(delivery, tenant=tenant, mailbox=mailbox,
                                                      error=error)

    async def dead_letters(self) -> list[DeadLetter]:
        return await self.broker.dead.dead_letters()

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        dead, payload = self.broker.dead.dead.pop(dead_letter_id)
        await self.publish(dead.provider, dead.delivery_id, payload)
        return dead

    async def close(self) -> None:
        pass


class FakeLeaseTable:
    """Who holds what, shared by the workers' fake leases (PostgreSQL's lock table)."""

    def __init__(self) -> None:
        self.members: dict[int, object] = {}
        self.holders: dict[int, object] = {}


class FakeLeases:
    def __init__(self, table: FakeLeaseTable) -> None:
        self.table = table
        self.slot: int | None = None
        self.held: set[int] = set()

    def members(self) -> tuple[int, int]:
        if self.slot is None:
            self.slot = next(s for s in range(64) if s not in self.table.members)
            self.table.members[self.slot] = self
        live = sorted(self.table.members)
        return live.index(self.slot), len(live)

    def take(self, partition: int) -> bool:
        if self.table.holders.setdefault(partition, self) is not self:
            return False
        self.held.add(partition)
        return True

    def release(self, partition: int) -> None:
        if self.table.holders.get(partition) is self:
            del self.table.holders[partition]
        self.held.discard(partition)

    def close(self) -> None:
        """Leaving, or dying: everything this worker held is free."""
        if self.slot is not None:
            self.table.members.pop(self.slot, None)
        for partition in list(self.held):
            self.release(partition)
        self.slot = None
