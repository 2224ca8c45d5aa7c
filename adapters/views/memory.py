"""In-memory view store: the fake for unit tests and scratch rebuilds. Same contract as SQL."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager

import orjson

from adapters.errors import StoreError
from adapters.views.errors import refused
from adapters.views.seal import ViewSealer
from projections.history import BASES, HISTORIES, canonical_versions, with_history
from projections.ports import Changes, Stuck, StuckChanges, checksum
from projections.rows import PROJECTIONS, Rows


class MemoryViews:
    def __init__(self) -> None:
        self._writer = threading.RLock()
        # every projection's rows, and its history's versions (row key: the version's moment)
        self._rows: dict[str, dict[tuple[str, str], dict[str, bytes]]] = {
            p: {} for p in (*PROJECTIONS, *HISTORIES.values())}
        self._positions: dict[str, int] = {}
        self._stuck: dict[tuple[str, str], Stuck] = {}
        # in memory nothing is stored: rows are kept as they are, without their `_owner` marks;
        # a deleted user's content is erased from the history when read (L2)
        self._plain = ViewSealer(None, self._deleted)

    def _deleted(self, tenant: str, user: str) -> bool:
        doc = self.rows("directory", tenant, f"user:{user}").get(user)
        return doc is not None and doc.get("status") == "deleted"

    def positions(self) -> dict[str, int]:
        return {p: self._positions.get(p, 0) for p in PROJECTIONS}

    def write(self, changes: Changes, positions: Mapping[str, int], *,
              fresh: bool = False, stuck: StuckChanges | None = None) -> None:
        bad = refused(changes)  # what PostgreSQL refuses, refused here too
        if bad is not None:
            raise bad
        if fresh:  # like the SQL stores' primary keys: nothing written when a row exists
            for projection, keyed in changes.items():
                table = self._rows[projection]
                for tenant_key, rows in keyed.items():
                    held = table.get(tenant_key, {})
                    if any(rk in held for rk in rows):
                        raise StoreError(f"cannot write views: {projection} row of "
                                         f"{tenant_key[1]!r} exists (fresh write)")
        for projection, keyed in changes.items():
            table = self._rows[projection]
            for (tenant, key), rows in keyed.items():
                encoded = {rk: self._plain.sealed(projection, tenant, key, rk, doc)
                           for rk, doc in rows.items()}
                if projection in BASES:  # versions are added (one of the same time replaced)
                    table.setdefault((tenant, key), {}).update(encoded)
                elif rows:
                    table[(tenant, key)] = encoded
                else:
                    table.pop((tenant, key), None)
        self._positions.update(positions)
        for mark_key, mark in (stuck or {}).items():
            if mark is None:
                self._stuck.pop(mark_key, None)
            else:
                self._stuck[mark_key] = mark

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        return dict(self._stuck)

    def forget_tenant(self, tenant: str, projections: Iterable[str]) -> None:
        for name in [n for p in projections for n in (p, HISTORIES[p])]:
            table = self._rows[name]
            for tenant_key in [tk for tk in table if tk[0] == tenant]:
                del table[tenant_key]

    def rows(self, projection: str, tenant: str, key: str) -> Rows:
        stored = self._rows[projection].get((tenant, key), {})
        return {rk: orjson.loads(doc) for rk, doc in stored.items()}

    def scan(self, projection: str, tenant: str, prefix: str = "") -> dict[str, Rows]:
        return {key: self.rows(projection, tenant, key)
                for (t, key) in sorted(self._rows[projection])
                if t == tenant and key.startswith(prefix)}

    def rows_as_of(self, projection: str, tenant: str, key: str, moment: str) -> Rows:
        versions = self._rows[HISTORIES[projection]].get((tenant, key), {})
        found = [m for m in versions if m <= moment]
        return self._plain.opened(projection, tenant, key, versions[max(found)]) if found else {}

    def scan_as_of(self, projection: str, tenant: str, prefix: str, moment: str
                   ) -> dict[str, Rows]:
        out = {key: self.rows_as_of(projection, tenant, key, moment)
               for (t, key) in sorted(self._rows[HISTORIES[projection]])
               if t == tenant and key.startswith(prefix)}
        return {key: rows for key, rows in out.items() if rows}

    def exclusive(self) -> AbstractContextManager[None]:
        return self._writer  # type: ignore[return-value]

    def reset(self, projection: str) -> None:
        self._rows[projection] = {}
        self._rows[HISTORIES[projection]] = {}
        self._positions[projection] = 0
        self._stuck = {k: v for k, v in self._stuck.items() if k[0] != projection}

    def checksum(self, projection: str) -> str:
        name = HISTORIES[projection]
        return with_history(
            checksum((t, k, rk, doc) for (t, k), rows in self._rows[projection].items()
                     for rk, doc in rows.items()),
            canonical_versions((t, k, m, self._plain.canonical(name, t, k, m, doc))
                               for (t, k), versions in self._rows[name].items()
                               for m, doc in versions.items()))
