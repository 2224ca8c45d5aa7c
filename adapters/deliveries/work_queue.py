"""The sync workers' work-queue port (issue #4): webhook deliveries to process, with retries and
a dead-letter queue. Adapters: `adapters.deliveries.work_jetstream.JetStreamWork` (production) and
`adapters.deliveries.work_sqlite.SqliteWork` (the embedded SQLite inbox). The hand-written fake for
unit tests passes the same contract tests (tests/integration/test_work_queue_contract.py).

A delivery is acknowledged (`ack`) only after what it caused is durable; `retry` puts it back
after `delay` seconds and counts an attempt; `put_dead_letter` stores it in the dead-letter queue
(idempotent per delivery: a second call for the same delivery returns the same id) — the caller
then records the event and acks. `replay` puts a dead letter back on the work queue (under the
same delivery id) and removes it from the dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.deliveries.model import Undecodable, WebhookDelivery, read_stored


@dataclass(frozen=True)
class Delivery:
    """One fetched delivery. Its stored bytes are decoded once, here, into `notice` (the typed
    delivery, or `Undecodable` with the reason); `payload` is kept only to be stored again
    (dead letters) and is never read by anything else."""

    provider: str
    delivery_id: str
    payload: bytes
    attempts: int  # this is attempt number `attempts` (1 = first delivery)
    handle: Any = None  # the adapter's own reference (a NATS message, a row id)
    tenant: str | None = None  # forwarded to a tenant's partition: only its mailboxes are synced
    notice: WebhookDelivery | Undecodable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "notice", read_stored(self.provider, self.payload))


@dataclass(frozen=True)
class DeadLetter:
    id: str
    provider: str
    delivery_id: str
    tenant: str | None
    mailbox: str | None
    attempts: int
    error: str
    at: str  # UTC ISO-8601, when it was dead-lettered

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "delivery_id": self.delivery_id,
                "tenant": self.tenant, "mailbox": self.mailbox, "attempts": self.attempts,
                "error": self.error, "at": self.at}


class WorkQueue(Protocol):
    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to `limit` deliveries due now, waiting at most `timeout` seconds for the first."""
        ...

    async def ack(self, delivery: Delivery) -> None: ...

    async def retry(self, delivery: Delivery, delay: float) -> None: ...

    async def put_dead_letter(self, delivery: Delivery, *, tenant: str | None,
                              mailbox: str | None, error: str) -> str: ...

    async def dead_letters(self) -> list[DeadLetter]: ...

    async def replay(self, dead_letter_id: str) -> DeadLetter:
        """Back on the work queue; KeyError when there is no such dead letter."""
        ...

    async def close(self) -> None: ...
