"""A counterfactual for `benchmarks.rebuild --without-histories`: the rebuild with no history
version computed or written (SPEC E4's past views left out), to measure what the histories cost
and what the rest of a rebuild reaches on its own. Not a product mode: the views it builds
have empty histories, and it holds every message row until the end of the log.

    python -m benchmarks.without_histories <crmsync arguments>   # e.g. --postgres URL rebuild

Importing this module replaces `Versions.flush` for builds (`live=False`: a time group's rows
are then only a history version) by dropping the group; a catch-up's flush (live rows) is
unchanged. The replacement happens at import, so the part processes of `crmsync rebuild
--parts N`, which are spawned and import the main module again, run without histories too.
"""

from __future__ import annotations

import sys

from domain.state import TenantState
from projections.versions import Versions
from runners.entrypoints.cli import main

_flush = Versions.flush


def _without_history(self: Versions, tenant: str, state: TenantState, live: bool = True) -> None:
    if live:
        _flush(self, tenant, state, live)
    else:
        self.groups.pop(tenant)


Versions.flush = _without_history  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
