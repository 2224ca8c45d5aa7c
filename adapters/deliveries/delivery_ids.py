"""The names every delivery store checks before it keeps a delivery: the provider (it names
NATS subjects and SQLite rows) and the dedup id (a NATS header, a primary key). Driver-free, so
the SQLite inbox does not load nats to check them."""

from __future__ import annotations

import re

_PROVIDER = re.compile(r"[a-z0-9_-]{1,32}")


def check_provider(provider: str) -> str:
    """Providers name subjects and rows: lowercase letters, digits, `_` and `-` only."""
    if not _PROVIDER.fullmatch(provider):
        raise ValueError(f"not a provider name: {provider[:40]!r}")
    return provider


def check_delivery_id(delivery_id: str) -> str:
    """Dedup ids go into a header: 1-512 printable ASCII characters without spaces."""
    if not (0 < len(delivery_id) <= 512 and re.fullmatch(r"[\x21-\x7e]+", delivery_id)):
        raise ValueError(f"not a delivery id: {delivery_id[:40]!r}")
    return delivery_id
