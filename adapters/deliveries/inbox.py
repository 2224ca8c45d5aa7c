"""The receiver's delivery port (issue #4): where accepted deliveries become durable.
Adapters: `inbox_jetstream.JetStreamInbox` (production) and `inbox_sqlite.SqliteInbox` (the
embedded default); one contract test suite runs against both
(tests/integration/test_delivery_inbox_contract.py)."""

from __future__ import annotations

from typing import Protocol

from adapters.deliveries.model import WebhookDelivery


class DeliveryInbox(Protocol):
    async def deliver(self, delivery: WebhookDelivery) -> bool:
        """Durable once it returns (in its stored form, `model.encode`); False when its
        `delivery_id` was already delivered."""
        ...

    async def store(self, provider: str, delivery_id: str, payload: bytes) -> bool:
        """The same for bytes already in the stored form (what `deliver` calls); ValueError
        for a provider name or delivery id unfit for a subject, a row or a header."""
        ...

    async def close(self) -> None: ...
