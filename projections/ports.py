"""The small view interface projections write to and queries read from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import orjson

from projections.rows import Doc, Rows

# projection -> (tenant, key) -> complete rows of that key (empty: the key has no rows now)
Changes = dict[str, dict[tuple[str, str], Rows]]


@dataclass(frozen=True)
class Stuck:
    """A tenant whose events from `position` on are held back from a projection (E8)."""

    position: int
    error: str


# (projection, tenant) -> its new stuck mark, or None: no longer stuck
StuckChanges = dict[tuple[str, str], Stuck | None]


class UnstorableRow(Exception):
    """A row of `tenant` that no view store can hold (NUL or a lone surrogate in a key, a
    document that is not JSON): the tenant is stuck, the others go on."""

    def __init__(self, tenant: str, projection: str, reason: str) -> None:
        super().__init__(f"{projection} row cannot be stored: {reason}")
        self.tenant = tenant
        self.projection = projection
        self.reason = reason


def storable_text(text: str) -> bool:
    """Text every store keeps as it is: UTF-8, no NUL (PostgreSQL's text refuses it)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def unstorable_keys(changes: Changes) -> UnstorableRow | None:
    """The first row of `changes` with a key no store can hold (cheap: keys only)."""
    for projection, keyed in changes.items():
        for (tenant, key), rows in keyed.items():
            for text in (tenant, key, *rows):
                if "\x00" in text or (not text.isascii() and not storable_text(text)):
                    return UnstorableRow(tenant, projection,
                                         f"NUL or lone surrogate in key {ascii(key)[:80]}")
    return None


def unstorable(changes: Changes) -> UnstorableRow | None:
    """The first row of `changes` that cannot be stored (looked for after a write failed, and
    by stores without PostgreSQL's limits, so that every store refuses the same rows)."""
    for projection, keyed in changes.items():
        for (tenant, key), rows in keyed.items():
            if not all(storable_text(t) for t in (tenant, key, *rows)):
                return UnstorableRow(tenant, projection,
                                     f"NUL or lone surrogate in key {ascii(key)[:80]}")
            for doc in rows.values():
                try:
                    encode_doc(doc)
                except (TypeError, ValueError) as exc:
                    return UnstorableRow(tenant, projection, f"document: {exc}")
    return None


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
              fresh: bool = False, stuck: StuckChanges | None = None) -> None:
        """Replace the rows of each changed key and set the positions and the `stuck` marks,
        in one transaction.

        `fresh`: the caller knows that none of the keys holds rows (a build writing each key
        for the first time), so the store need not look for old rows to remove; a row that
        exists already makes the write fail (StoreError) and changes nothing. A row that
        cannot be stored raises UnstorableRow (naming its tenant) and changes nothing."""
        ...

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        """(projection, tenant) -> where its events are held back and why (E8)."""
        ...

    def forget_tenant(self, tenant: str, projections: Iterable[str]) -> None:
        """Remove every row of `tenant` from these projections (a build writing it again)."""
        ...

    def reset(self, projection: str) -> None:
        """Forget a projection's rows, position and stuck marks."""
        ...

    def checksum(self, projection: str) -> str:
        """Over the live rows and the history's canonical versions (projections.history)."""
        ...

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows:
        """The key's rows as of a moment (projections.history): its latest version then."""
        ...

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]:
        """`scan` as of a moment: every key with a prefix, its latest non-empty version then."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by a projector while it writes: one writer per view store at a time, across
        threads and processes, so positions never go back."""
        ...
