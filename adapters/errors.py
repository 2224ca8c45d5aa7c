"""crmsync's own infrastructure errors; adapters translate library errors into these."""


class StoreError(Exception):
    """The event store or a view store failed (I/O, corrupt data)."""


class ConcurrencyConflict(StoreError):
    """Another writer appended to the same tenant stream first; reload and decide again."""
