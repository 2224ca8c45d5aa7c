"""The contact-sync runner's own durable state (issue #5), beside the engine's store: one table
`contact_sync_state(tenant, key, value)` in the SQLite file of `--db` or in the PostgreSQL schema
of the URL (created on first use). Nothing in it is a domain fact — the facts are the commands
the runner issues — it is where the runner is:

- `position`: how far it has read the event log (queued changes executed and acknowledged),
- `cursor/<user>/<folder>`: the Graph delta link of each folder of each user's book,
- `seen/<user>/<external id>`: the content fingerprint and lastModifiedDateTime of the last
  version of a contact that went either way (echo suppression, C4),
- `categories/<user>`: the user's master categories as last seen (renames, C3),
- `done/<change id>`: the provider's answer to a queued change, kept until it is acknowledged
  (a crash between the provider call and the acknowledgement does not call the provider twice).

`put` writes several keys in one transaction; on PostgreSQL `try_lock` makes one runner per
schema the one that executes changes. Library errors become `StoreError`. The backends are
modules of their own, each importing only its driver: `contact_sync_sqlite`,
`contact_sync_postgres`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

TABLE = ("CREATE TABLE IF NOT EXISTS contact_sync_state (tenant TEXT NOT NULL, key TEXT NOT NULL, "
          "value TEXT NOT NULL, PRIMARY KEY (tenant, key))")


class KeyValues(Protocol):
    def get(self, tenant: str, key: str) -> str | None: ...

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        """Set (None: delete) every key in one transaction."""

    def try_lock(self) -> bool:
        """Become the one runner of this store (held until `close`); False if another holds
        it. Embedded stores (memory, SQLite) have one runner by construction: always True."""

    def close(self) -> None: ...


class MemoryKeyValues:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}

    def get(self, tenant: str, key: str) -> str | None:
        return self.data.get((tenant, key))

    def put(self, tenant: str, items: Mapping[str, str | None]) -> None:
        for key, value in items.items():
            if value is None:
                self.data.pop((tenant, key), None)
            else:
                self.data[(tenant, key)] = value

    def try_lock(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _folder(folder: str | None) -> str:
    return "-" if folder is None else folder


class ContactSyncStore:
    """The typed view of the runner's keys (see the module's docstring)."""

    def __init__(self, backend: KeyValues) -> None:
        self.backend = backend

    def close(self) -> None:
        self.backend.close()

    def try_lock(self) -> bool:
        return self.backend.try_lock()

    def position(self) -> int:
        value = self.backend.get("", "position")
        return 0 if value is None else int(value)

    def set_position(self, position: int) -> None:
        self.backend.put("", {"position": str(position)})

    def cursor(self, tenant: str, user: str, folder: str | None) -> str | None:
        return self.backend.get(tenant, f"cursor/{user}/{_folder(folder)}")

    def set_cursor(self, tenant: str, user: str, folder: str | None, cursor: str | None) -> None:
        self.backend.put(tenant, {f"cursor/{user}/{_folder(folder)}": cursor})

    def seen(self, tenant: str, user: str, external_id: str) -> dict[str, Any] | None:
        value = self.backend.get(tenant, f"seen/{user}/{external_id}")
        return None if value is None else dict(orjson.loads(value))

    def remember(self, tenant: str, user: str, seen: Mapping[str, Mapping[str, Any]]) -> None:
        """Record, per external id, `{"fingerprint", "modified", "by": "us" | "them"}`."""
        self.backend.put(tenant, {f"seen/{user}/{external_id}": orjson.dumps(dict(value)).decode()
                                  for external_id, value in seen.items()})

    def categories(self, tenant: str, user: str) -> dict[str, str] | None:
        value = self.backend.get(tenant, f"categories/{user}")
        return None if value is None else dict(orjson.loads(value))

    def set_categories(self, tenant: str, user: str, categories: Mapping[str, str]) -> None:
        self.backend.put(tenant, {f"categories/{user}": orjson.dumps(dict(categories)).decode()})

    def done(self, tenant: str, change_id: str) -> dict[str, Any] | None:
        value = self.backend.get(tenant, f"done/{change_id}")
        return None if value is None else dict(orjson.loads(value))

    def set_done(self, tenant: str, change_id: str, answer: Mapping[str, Any] | None,
                 seen: tuple[str, str, Mapping[str, Any]] | None = None) -> None:
        """The provider's answer to a change (None: forget it, once acknowledged), together with
        what it wrote (`(user, external id, seen)`), in one transaction."""
        items: dict[str, str | None] = {
            f"done/{change_id}": None if answer is None else orjson.dumps(dict(answer)).decode()}
        if seen is not None:
            user, external_id, value = seen
            items[f"seen/{user}/{external_id}"] = orjson.dumps(dict(value)).decode()
        self.backend.put(tenant, items)
