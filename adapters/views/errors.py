"""The view stores' refusal of a row no store can hold: both the projector's UnstorableRow (it
names the tenant, which is then stuck) and a StoreError (for every other caller)."""

from __future__ import annotations

from adapters.errors import StoreError
from projections.ports import Changes, UnstorableRow, unstorable


class UnstorableViewRow(UnstorableRow, StoreError):
    """A row of one tenant that no view store can hold (NUL or a lone surrogate in a key, a
    document that is not JSON)."""


def refused(changes: Changes) -> UnstorableViewRow | None:
    """The first row of `changes` no store can hold, as the stores raise it."""
    bad = unstorable(changes)
    return None if bad is None else UnstorableViewRow(bad.tenant, bad.projection, bad.reason)
