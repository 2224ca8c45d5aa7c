"""The past of every view (SPEC E4, issue #11): each key's rows as of every domain time.

Beside each projection's live rows, its *history* (`<projection>_history`) keeps one version
per (tenant, key) and domain time at which the key's rows changed: row key = that time
(`moment`, sortable text), document = the key's complete rows then ({}: the key had none).
A version holds until the key's next version, so nothing is ever updated: versions are only
inserted. Rows as of `at` are, per key, those of its latest version at or before `at` — a
version is written after the *last* event of its time, because an `at` answer sees every event
of its time. `AsOf` is the same `ViewReader` port over those versions, so `projections.queries`
answers `at` exactly as it answers live, from the rows of one projector (E3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Protocol

from projections.ports import checksum, encode_doc
from projections.rows import PROJECTIONS, Rows

SUFFIX = "_history"
HISTORIES: dict[str, str] = {p: p + SUFFIX for p in PROJECTIONS}
BASES: dict[str, str] = {h: p for p, h in HISTORIES.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHIFT = 10 ** 17  # microseconds: every datetime from year 1 on is positive after the shift


def moment(at: datetime) -> str:
    """A domain time as fixed-width text that sorts as the times do (microseconds)."""
    delta = at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros + _SHIFT:018d}"


class PastReader(Protocol):
    """What a view store offers for `AsOf`: each key's latest version at or before `moment`."""

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows: ...

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]: ...


class AsOf:
    """A ViewReader of the views as of domain time `at`, from their histories."""

    def __init__(self, store: PastReader, at: datetime) -> None:
        self.store = store
        self.moment = moment(at)

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        return self.store.rows_as_of(projection, tenant, key, self.moment)

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        return self.store.scan_as_of(projection, tenant, prefix, self.moment)


def latest(versions: Iterable[tuple[str, str, Rows]]) -> dict[str, Rows]:
    """key -> rows of its last version, from (key, moment, rows) in (key, moment) order; keys
    whose last version is empty are left out."""
    out: dict[str, Rows] = {}
    for key, _, rows in versions:
        out[key] = rows
    return {k: rows for k, rows in out.items() if rows}


def canonical_versions(versions: Iterable[tuple[str, str, str, bytes]]
                       ) -> Iterator[tuple[str, str, str, bytes]]:
    """(tenant, key, moment, canonical bytes) without the versions that change nothing: one
    equal to the key's previous version, or an empty first one. Two histories that answer the
    same at every time have the same canonical versions, whatever redundant versions a writer
    left (a key touched by an event without a change), so checksums compare them (E3)."""
    previous: tuple[str, str] | None = None
    last = encode_doc({})
    for tenant, key, at, doc in sorted(versions):
        if (tenant, key) != previous:
            previous, last = (tenant, key), encode_doc({})
        if doc == last:
            continue
        last = doc
        yield tenant, key, at, doc


def with_history(live: str, versions: Iterable[tuple[str, str, str, bytes]]) -> str:
    """A projection's checksum: its live rows' and its history's canonical versions'."""
    return checksum([("", "live", live, b""),
                     *(("history", f"{t}\x1f{k}", m, doc) for t, k, m, doc in versions)])
