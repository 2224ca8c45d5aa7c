"""Per-user content keys for crypto-shredding (SPEC L2).

Each user of a tenant gets a random 256-bit data key the first time content of theirs is stored.
It is kept wrapped (AES-256-GCM) under the deployment's master key, one row per (tenant, user)
in a table beside the events (`content_keys`; SQLite: `content_keys_sqlite`, PostgreSQL:
`content_keys_postgres`, each importing only its own driver). Destroying a key replaces its row
by a tombstone (no key bytes, the time of destruction): the content sealed with it can never be
read again, and no new key is ever issued for that user, so a writer racing the deletion cannot
store readable content of theirs afterwards.

The master key is `$CRMSYNC_CONTENT_KEY` (32 bytes, base64), handed in by the composition root
(runners.bootstrap; adapters do not read the environment). Without it the embedded SQLite store
uses a 0600 key file beside the database (`<db>.content-key`), created on first use; PostgreSQL
refuses to seal content (StoreError naming the variable). Keys are cached unwrapped in memory;
`refresh()` drops the cache when any key was destroyed since, so another process's DeleteUser
takes effect here. Each page read and each append calls `expire()` (no statement): the next use
of a key — opening content read, sealing content appended — refreshes first. So every append
asks once before it seals (L2: a key destroyed by another process is never used to seal after
that), and a read or an append that opens and seals nothing (a cursor event, a page of another
tenant's events the caller skips) asks nothing (issue #15: round trips per delivery).

Views seal their content with a second key per user, derived from the data key (HKDF-SHA256),
used with AES-SIV: deterministic, so a rebuilt view equals the incremental one byte for byte
(E3), and destroyed with the data key (adapters.views.seal).
"""

from __future__ import annotations

import base64
import functools
import os
import threading
from abc import ABC, abstractmethod
from binascii import a2b_base64, b2a_base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from adapters.errors import StoreError
from adapters.key_text import decode_key

KEY_ENV = "CRMSYNC_CONTENT_KEY"
KEY_FILE_SUFFIX = ".content-key"
_WRAP_AAD = "crmsync.content-key.v1"
_SEAL_AAD = "crmsync.content.v1"
_VIEW_INFO = b"crmsync.view-key.v1"  # HKDF info: the view key is not the log's key

TABLE = ("CREATE TABLE IF NOT EXISTS content_keys (tenant TEXT NOT NULL, user_id TEXT NOT NULL, "
         "wrapped {blob}, destroyed_at TEXT, erasing_at TEXT, PRIMARY KEY (tenant, user_id))")
MARK = "UPDATE content_keys SET erasing_at = ? WHERE tenant = ? AND user_id = ?"
PENDING = "SELECT tenant, user_id FROM content_keys WHERE erasing_at IS NOT NULL"


def parse_master_key(text: str, source: str) -> bytes:
    """32 bytes from base64 (standard or URL-safe); the message never shows the value."""
    try:
        return decode_key(text, source)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def configured_master_key(text: str | None) -> bytes | None:
    """The configured master key (base64 text of $CRMSYNC_CONTENT_KEY, handed in), None when
    none is configured."""
    return parse_master_key(text, KEY_ENV) if text else None


def key_file_master_key(db_path: str) -> bytes:
    """The master key of an embedded store: `<db>.content-key`, created 0600 when missing."""
    path = Path(db_path + KEY_FILE_SUFFIX)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            return parse_master_key(path.read_text(), str(path))
        except OSError as exc:
            raise StoreError(f"cannot read the content key file {path}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot create the content key file {path}: {exc}") from exc
    key = os.urandom(32)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(key).decode() + "\n")
    return key


@functools.lru_cache(maxsize=4096)  # one per user: opening a tenant's mail asks it per event
def _aad(kind: str, tenant: str, user: str) -> bytes:
    return orjson.dumps([kind, tenant, user])


class ContentKeys(ABC):
    """Port: the data key of (tenant, user). Subclasses keep the wrapped keys."""

    def __init__(self, master: bytes | None, missing_reason: str = "") -> None:
        self._master = AESGCM(master) if master is not None else None
        self._missing_reason = missing_reason
        # (data key, view key) per user; None: destroyed
        self._cache: dict[tuple[str, str], tuple[AESGCM, AESSIV] | None] = {}
        self._destroyed: object = None  # fingerprint of the destroyed keys' set last seen
        self._due = True  # refresh before the next use of a key (`expire`)
        self._lock = threading.Lock()

    # -- storage --------------------------------------------------------------------------------
    def _read(self, tenant: str, user: str) -> tuple[bytes | None, bool] | None:
        """(wrapped key, destroyed) of the row, None without one."""
        rows = self._run("SELECT wrapped, destroyed_at FROM content_keys WHERE tenant = ? "
                         "AND user_id = ?", (tenant, user))
        return (rows[0][0], rows[0][1] is not None) if rows else None

    @abstractmethod
    def _insert(self, tenant: str, user: str, wrapped: bytes) -> None:
        """Insert unless a row exists (a concurrent writer's key, or a tombstone, wins)."""

    @abstractmethod
    def _tombstone(self, tenant: str, user: str, at: str) -> bool:
        """Replace the row by a tombstone and make its bytes unrecoverable from the files;
        True when a key was destroyed now."""

    @abstractmethod
    def _destroyed_fingerprint(self) -> object:
        """What identifies the *set* of destroyed keys (not just their number: a shard move
        deletes a moved tenant's tombstones, and as many keys destroyed meanwhile must still be
        seen)."""

    @abstractmethod
    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement (`?` placeholders) in its own transaction; StoreError on failure."""

    # -- erasure intents: DeleteUser marks the key before its events are appended, so a
    # process that dies between the append and the destruction leaves a trace `pending` finds
    def mark_erasing(self, tenant: str, user: str, at: str | None) -> None:
        self._run(MARK, (at, tenant, user))

    def pending_erasures(self) -> list[tuple[str, str]]:
        return [(str(t), str(u)) for t, u in self._run(PENDING)]

    def close(self) -> None:
        return None

    # -- keys -----------------------------------------------------------------------------------
    def _wrapper(self) -> AESGCM:
        if self._master is None:
            raise StoreError(f"cannot seal or open mail content: {self._missing_reason}")
        return self._master

    def _unwrap(self, tenant: str, user: str, wrapped: bytes) -> tuple[AESGCM, AESSIV]:
        try:
            raw = self._wrapper().decrypt(wrapped[:12], wrapped[12:],
                                          _aad(_WRAP_AAD, tenant, user))
        except InvalidTag:
            raise StoreError(f"the content key of {tenant}/{user} does not open with "
                             f"{KEY_ENV} (another master key?)") from None
        return AESGCM(raw), AESSIV(HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
                                        info=_VIEW_INFO + _aad("", tenant, user)).derive(raw))

    def refresh(self) -> None:
        """Forget cached keys if any key was destroyed since the last look (other processes)."""
        seen = self._destroyed_fingerprint()
        if seen != self._destroyed:
            with self._lock:
                self._cache.clear()
                self._destroyed = seen

    def expire(self) -> None:
        """Refresh before the next use of a key (no statement now): called for each page read
        and each append."""
        self._due = True

    def _refresh_if_due(self) -> None:
        if self._due:
            self._due = False  # before: an `expire` during the refresh is not lost
            try:
                self.refresh()
            except BaseException:
                self._due = True
                raise

    def key(self, tenant: str, user: str, create: bool) -> AESGCM | None:
        """The user's data key; None when destroyed (or absent and not `create`). Creating a
        key for a user whose key was destroyed raises StoreError (L2: never again)."""
        self._refresh_if_due()
        keys = self._keys(tenant, user, create)
        return keys[0] if keys is not None else None

    def view_key(self, tenant: str, user: str, create: bool) -> AESSIV | None:
        """The user's view key (AES-SIV, derived from the data key); None when the data key is
        destroyed (erased) or absent and not `create` — never an error for a deleted user."""
        self._refresh_if_due()
        keys = self._keys(tenant, user, False)
        if keys is None and create and (tenant, user) not in self._cache \
                and self._read(tenant, user) is None:
            keys = self._keys(tenant, user, True)
        return keys[1] if keys is not None else None

    def destroyed(self, tenant: str, user: str) -> bool:
        """The user's key was destroyed (L2: their content is erased)."""
        self._refresh_if_due()
        if (tenant, user) in self._cache:
            return self._cache[(tenant, user)] is None
        row = self._read(tenant, user)
        return row is not None and (row[1] or row[0] is None)

    def _keys(self, tenant: str, user: str, create: bool) -> tuple[AESGCM, AESSIV] | None:
        if (tenant, user) in self._cache:
            cached = self._cache[(tenant, user)]
            if cached is not None or not create:
                return cached
        with self._lock:
            row = self._read(tenant, user)
            if row is None and create:
                nonce = os.urandom(12)
                wrapped = nonce + self._wrapper().encrypt(
                    nonce, AESGCM.generate_key(bit_length=256), _aad(_WRAP_AAD, tenant, user))
                self._insert(tenant, user, wrapped)
                row = self._read(tenant, user)
            if row is None:
                return None  # not cached: it may be created later
            wrapped_key, destroyed = row
            if destroyed or wrapped_key is None:
                if create:
                    raise StoreError(f"user {user!r} of tenant {tenant!r} was deleted: their "
                                     "content key is destroyed")
                self._cache[(tenant, user)] = None
                return None
            keys = self._unwrap(tenant, user, wrapped_key)
            self._cache[(tenant, user)] = keys
            return keys

    def destroy(self, tenant: str, user: str, at: str) -> bool:
        """Destroy the user's key (idempotent): L2's crypto-shredding."""
        with self._lock:
            self._cache[(tenant, user)] = None
            return self._tombstone(tenant, user, at)

    # -- sealing --------------------------------------------------------------------------------
    def seal(self, tenant: str, user: str, values: Sequence[str]) -> str:
        """`values` encrypted under the user's key, as base64 text (nonce + ciphertext)."""
        aes = self.key(tenant, user, create=True)
        assert aes is not None
        nonce = os.urandom(12)
        sealed = aes.encrypt(nonce, orjson.dumps(list(values)), _aad(_SEAL_AAD, tenant, user))
        return b2a_base64(nonce + sealed, newline=False).decode()

    def open(self, tenant: str, user: str, sealed: str | bytes) -> list[str] | None:
        """The values sealed for the user; None when the key is destroyed (erased)."""
        self._refresh_if_due()
        cached = self._cache.get((tenant, user))  # the common case without a call: a rebuild
        aes = cached[0] if cached is not None else self.key(tenant, user, create=False)
        if aes is None:
            return None
        raw = memoryview(a2b_base64(sealed))  # nonce and ciphertext read in place, not copied
        try:
            values: list[str] = orjson.loads(aes.decrypt(raw[:12], raw[12:],
                                                         _aad(_SEAL_AAD, tenant, user)))
        except InvalidTag:
            raise StoreError(f"sealed content of {tenant}/{user} does not open") from None
        return values


class MemoryContentKeys(ContentKeys):
    """Keys of the in-memory event store (tests, demo): a random master key per process."""

    def __init__(self) -> None:
        super().__init__(AESGCM.generate_key(bit_length=256))
        self._rows: dict[tuple[str, str], tuple[bytes | None, bool]] = {}

    def _read(self, tenant: str, user: str) -> tuple[bytes | None, bool] | None:
        return self._rows.get((tenant, user))

    def _insert(self, tenant: str, user: str, wrapped: bytes) -> None:
        self._rows.setdefault((tenant, user), (wrapped, False))

    def _tombstone(self, tenant: str, user: str, at: str) -> bool:
        before = self._rows.get((tenant, user))
        self._rows[(tenant, user)] = (None, True)
        return before is not None and not before[1]

    def _destroyed_fingerprint(self) -> object:
        return frozenset(key for key, (_, destroyed) in self._rows.items() if destroyed)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return []  # in memory nothing survives a crash: no intents to keep
