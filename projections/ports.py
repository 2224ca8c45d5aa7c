"""The small view interface projections write to and queries read from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import orjson

from projections.rows import Doc, Rows

# projection -> (tenant, key) -> complete rows of that key (empty: the key has no rows now)
Changes = dict[str, dict[tuple[str, str], Rows]]


def encode_doc(doc: Doc) -> bytes:
    """Canonical bytes of a row document: the same on every store, so checksums compare."""
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def checksum(rows: Iterable[tuple[str, str, str, bytes]]) -> str:
    """sha256 over (tenant, key, row_key, doc) rows in sorted order."""
    digest = hashlib.sha256()
    for tenant, key, row_key, doc in sorted(rows):
        digest.update(b"\x1f".join((tenant.encode(), key.encode(), row_key.encode(), doc)))
        digest.update(b"\x1e")
    return digest.hexdigest()


class ViewReader(Protocol):
    def rows(self, projection: str, tenant: str, key: str) -> Rows: ...

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]: ...


class ViewStore(ViewReader, Protocol):
    def positions(self) -> dict[str, int]:
        """Tracking position of every projection (0 when never run)."""
        ...

    def write(self, changes: Changes, positions: Mapping[str, int], *,
              fresh: bool = False) -> None:
        """Replace the rows of each changed key and set the positions, in one transaction.

        `fresh`: the caller knows that none of the keys holds rows (a build writing each key
        for the first time), so the store need not look for old rows to remove; a row that
        exists already makes the write fail (StoreError) and changes nothing."""
        ...

    def reset(self, projection: str) -> None:
        """Forget a projection's rows and position."""
        ...

    def checksum(self, projection: str) -> str: ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by a projector while it writes: one writer per view store at a time, across
        threads and processes, so positions never go back."""
        ...
