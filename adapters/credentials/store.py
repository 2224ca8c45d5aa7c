"""Mailbox credentials, encrypted at rest (SPEC §6 `credentials`): never in an event.

One table `mailbox_credentials(tenant, mailbox, nonce, ciphertext, key_id, updated_at)` in the
engine's store — the SQLite file, or the PostgreSQL schema of the URL. Each value is the JSON of
the credentials sealed with AES-256-GCM (`cryptography`), a fresh 96-bit nonce per write, and the
associated data `["crmsync.credentials.v1", tenant, mailbox]`: a row copied to another mailbox
does not decrypt. `key_id` names the key (a hash of it, not the key) so a wrong key is reported as
such. A second table `mailbox_credentials_erasure` keeps how far `erase_removed` has read the log.

The key is `$CRMSYNC_CREDENTIALS_KEY` (32 bytes, base64). Without it, the embedded SQLite store
uses a key file beside the database (`<db>.credentials-key`, created 0600 on the first write);
the PostgreSQL store refuses to store credentials. Library errors become CredentialStoreError;
no secret (key, token, password, plaintext) is ever logged or put in a message.

This module is the port and what both backends share; each backend is a module of its own that
imports only its driver (`store_sqlite`, `store_postgres`), so the embedded engine never loads
psycopg.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.errors import CredentialStoreError
from adapters.key_text import decode_key

KEY_ENV = "CRMSYNC_CREDENTIALS_KEY"
KEY_FILE_SUFFIX = ".credentials-key"
_AAD_VERSION = "crmsync.credentials.v1"

TABLES = (
    "CREATE TABLE IF NOT EXISTS mailbox_credentials (tenant TEXT NOT NULL, mailbox TEXT NOT NULL, "
    "nonce {blob} NOT NULL, ciphertext {blob} NOT NULL, key_id TEXT NOT NULL, "
    "updated_at TEXT NOT NULL, PRIMARY KEY (tenant, mailbox))",
    "CREATE TABLE IF NOT EXISTS mailbox_credentials_erasure (id INTEGER PRIMARY KEY "
    "CHECK (id = 1), position BIGINT NOT NULL)",
)


class CredentialStore(Protocol):
    """Port: the credentials of one mailbox, as the JSON object ConnectMailbox carried."""

    def ready(self) -> None:
        """Raise CredentialStoreError unless `put` can work (a key is available)."""

    def put(self, tenant: str, mailbox: str, credentials: dict[str, Any]) -> None: ...

    def get(self, tenant: str, mailbox: str) -> dict[str, Any] | None: ...

    def erase(self, tenant: str, mailbox: str) -> None:
        """Idempotent; needs no key."""

    def is_empty(self) -> bool: ...

    def erasure_position(self) -> int:
        """How far `erase_removed` has read the event log."""

    def advance_erasure(self, position: int) -> None: ...

    def close(self) -> None: ...


def parse_key(text: str, source: str) -> bytes:
    """A 32-byte key from base64 (standard or URL-safe); the message never shows the value."""
    try:
        return decode_key(text, source)
    except ValueError as exc:
        raise CredentialStoreError(str(exc)) from None


def key_id(key: bytes) -> str:
    return "k1-" + hashlib.sha256(b"crmsync.credentials.key-id\0" + key).hexdigest()[:16]


def _aad(tenant: str, mailbox: str) -> bytes:
    return orjson.dumps([_AAD_VERSION, tenant, mailbox])


class SqlCredentialStore(ABC):
    """The shared implementation; subclasses run SQL (written with `?` placeholders)."""

    backend = ""

    def __init__(self, key: str | None = None) -> None:
        # `key`: base64 of the configured key ($CRMSYNC_CREDENTIALS_KEY, passed by the
        # composition root; adapters do not read the environment); None: the backend's own.
        self._configured = key
        self._key: bytes | None = None

    # -- the backend ---------------------------------------------------------------------------
    @abstractmethod
    def _run(self, doing: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; rows for a SELECT. Errors: StoreError."""

    @abstractmethod
    def _load_key(self, create: bool) -> bytes | None:
        """The key when none is configured (None: there is none and `create` is off)."""

    def close(self) -> None:
        return None

    # -- the key --------------------------------------------------------------------------------
    def _current_key(self, create: bool) -> bytes | None:
        if self._key is None:
            configured = self._configured
            self._key = parse_key(configured, KEY_ENV) if configured else self._load_key(create)
        return self._key

    def ready(self) -> None:
        self._current_key(create=True)

    # -- the port -------------------------------------------------------------------------------
    def put(self, tenant: str, mailbox: str, credentials: dict[str, Any]) -> None:
        key = self._current_key(create=True)
        assert key is not None  # _load_key(create=True) returns a key or raises
        nonce = os.urandom(12)
        try:
            sealed = AESGCM(key).encrypt(nonce, orjson.dumps(credentials), _aad(tenant, mailbox))
        except (TypeError, ValueError, orjson.JSONEncodeError):
            raise CredentialStoreError(f"cannot encrypt the credentials of mailbox {mailbox!r}"
                                       ) from None
        self._run(f"store the credentials of mailbox {mailbox!r}",
                  "INSERT INTO mailbox_credentials (tenant, mailbox, nonce, ciphertext, key_id, "
                  "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, mailbox) DO UPDATE "
                  "SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, "
                  "key_id = excluded.key_id, updated_at = excluded.updated_at",
                  (tenant, mailbox, nonce, sealed, key_id(key), datetime.now(UTC).isoformat()))

    def get(self, tenant: str, mailbox: str) -> dict[str, Any] | None:
        rows = self._run(f"read the credentials of mailbox {mailbox!r}",
                         "SELECT nonce, ciphertext, key_id FROM mailbox_credentials "
                         "WHERE tenant = ? AND mailbox = ?", (tenant, mailbox))
        if not rows:
            return None
        nonce, sealed, stored_id = bytes(rows[0][0]), bytes(rows[0][1]), str(rows[0][2])
        key = self._current_key(create=False)
        if key is None:
            raise CredentialStoreError(f"the credentials of mailbox {mailbox!r} are encrypted, "
                                       f"but no key is configured ({KEY_ENV})")
        if stored_id != key_id(key):
            raise CredentialStoreError(f"the credentials of mailbox {mailbox!r} were encrypted "
                                       f"with key {stored_id}, not the configured key "
                                       f"{key_id(key)}")
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, _aad(tenant, mailbox))
            value = orjson.loads(plain)
        except (InvalidTag, ValueError, orjson.JSONDecodeError):
            raise CredentialStoreError(f"the credentials of mailbox {mailbox!r} do not decrypt "
                                       "(wrong key, or a row altered or moved)") from None
        if not isinstance(value, dict):
            raise CredentialStoreError(f"the credentials of mailbox {mailbox!r} are not an object")
        return value

    def erase(self, tenant: str, mailbox: str) -> None:
        self._run(f"erase the credentials of mailbox {mailbox!r}",
                  "DELETE FROM mailbox_credentials WHERE tenant = ? AND mailbox = ?",
                  (tenant, mailbox))

    def is_empty(self) -> bool:
        return not self._run("read the credential store",
                             "SELECT 1 FROM mailbox_credentials LIMIT 1")

    def erasure_position(self) -> int:
        rows = self._run("read the erasure position",
                         "SELECT position FROM mailbox_credentials_erasure WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def advance_erasure(self, position: int) -> None:
        self._run("record the erasure position",
                  "INSERT INTO mailbox_credentials_erasure (id, position) VALUES (1, ?) "
                  "ON CONFLICT (id) DO UPDATE SET position = CASE WHEN excluded.position > "
                  "mailbox_credentials_erasure.position THEN excluded.position "
                  "ELSE mailbox_credentials_erasure.position END", (position,))
