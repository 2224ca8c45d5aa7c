"""Mailbox credentials (adapters.credentials.store) in the engine's SQLite file; the key is the
configured one, else a 0600 key file beside the database, created on the first write."""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from adapters.credentials.store import KEY_FILE_SUFFIX, TABLES, SqlCredentialStore, parse_key
from adapters.errors import CredentialStoreError
from adapters.private_files import private_file


class SqliteCredentialStore(SqlCredentialStore):
    """In the engine's SQLite file; the configured key, else the key file beside it."""

    backend = "SQLite"

    def __init__(self, path: str, key: str | None = None) -> None:
        super().__init__(key)
        self.path = path
        self.key_path = f"{path}{KEY_FILE_SUFFIX}"
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(private_file(path), timeout=30, isolation_level=None,
                                         check_same_thread=False)
            for statement in TABLES:
                self._conn.execute(statement.format(blob="BLOB"))
        except sqlite3.Error as exc:
            raise CredentialStoreError(f"cannot open the credential store (SQLite): {exc}"
                                       ) from exc

    def _run(self, doing: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, tuple(params)).fetchall())
            except sqlite3.Error as exc:
                raise CredentialStoreError(f"cannot {doing} (SQLite): {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _load_key(self, create: bool) -> bytes | None:
        try:
            return self._read_key_file()
        except FileNotFoundError:
            if not create:
                return None
        key = os.urandom(32)
        tmp = f"{self.key_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(key).decode() + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, self.key_path)  # atomic, and never over another process's key
            except FileExistsError:
                return self._read_key_file()
            return key
        except OSError as exc:
            raise CredentialStoreError(f"cannot create the key file {self.key_path}: "
                                       f"{exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _read_key_file(self) -> bytes:
        try:
            with open(self.key_path, encoding="ascii") as key_file:
                mode = os.fstat(key_file.fileno()).st_mode
                text = key_file.read()
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
            raise CredentialStoreError(f"cannot read the key file {self.key_path}: {reason}"
                                       ) from None
        if mode & 0o077:
            raise CredentialStoreError(f"the key file {self.key_path} is readable by others "
                                       f"(mode {mode & 0o777:o}); chmod 600 it")
        return parse_key(text, f"the key file {self.key_path}")
