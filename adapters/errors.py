"""crmsync's own infrastructure errors; adapters translate library errors into these."""


class StoreError(Exception):
    """The event store or a view store failed (I/O, corrupt data)."""


class ConcurrencyConflict(StoreError):
    """Another writer appended to the same tenant stream first; reload and decide again."""


class UnparseableMessage(ValueError):
    """A raw RFC 5322 message that cannot become a MailMessage (no usable From or Date, broken
    MIME, undecodable headers); `reason` says why, for the sync status and the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedWebhook(Exception):
    """A provider payload (webhook body, delta or history page, message resource) that cannot be
    read. `field` names where, as a dotted path into the payload (`message.data.historyId`,
    `value[2].clientState`, `validationToken`, `body`); `reason` says what is wrong. Answered as
    400 with the reason, and recorded."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DeliveryStoreError(Exception):
    """A webhook delivery could not be made durable (NATS JetStream or the SQLite inbox failed,
    timed out or is unreachable). The provider gets 503 with Retry-After and delivers again."""
