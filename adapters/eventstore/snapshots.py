"""Snapshots of a tenant's command-side state, so a restarted process does not fold the whole
stream before its first command (the 1M tenant: under a second from a snapshot, issue #15).

A snapshot is the pickled `TenantState` at a stream position (`seq`), encrypted and
authenticated with AES-256-GCM under a key derived from the deployment's secret, the row's tenant,
code version and seq as its associated data. It is only a cache of the log: one that does not
verify (other key, tampered, moved to another row), that was taken by a different fold (the
version is a hash of the source of `domain.state` and of every domain module it imports: the
events, the state's classes and the folds; `fold_modules`), or that cannot be read is ignored and
the state is folded from the log as without snapshots. A deploy that changes only rules (decide,
commands, permissions, visibility...) keeps the snapshots: they are folds, and no rule runs in a
fold (issue #15: such a deploy's first command stays under a second). Unpickling only what our
own key authenticated is what makes pickle acceptable here: whoever can forge a snapshot holds
the secret already.

Restoring works at memory speed (issue #15: the 1M tenant's first command from a snapshot):
the packed state is mostly arrays and bytes, so the pickle is not compressed (zlib took longer to
undo than PostgreSQL takes to send the bytes), and nothing is hashed a second time (the GCM tag
authenticates the bytes; `mac` is an HMAC of the row's fields and that tag only, checked before
decrypting). The projection runners' states hold mail subjects, hence the encryption (SPEC
L2); a tenant's command-side state holds none (`TenantState.message_content` is off there) but
names users, records and addresses. A user's erasure (UserContentErased) discards the tenant's
snapshot and the projection runners' one: no snapshot older than an erasure is kept, whatever
it holds.

Stored one row per tenant (the newest wins), in the event store's database: SQLite beside the
events, PostgreSQL in the URL's schema (`snapshots_sqlite`, `snapshots_postgres`: each imports
only its driver). Errors are `StoreError`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import hmac
import os
import pickle
import sys
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import domain
from adapters.gc_pause import paused_gc
from domain.state import TenantState

TABLE = ("CREATE TABLE IF NOT EXISTS tenant_snapshots (tenant TEXT PRIMARY KEY, version TEXT "
         "NOT NULL, seq BIGINT NOT NULL, mac {blob} NOT NULL, state {blob} NOT NULL)")
UPSERT = ("INSERT INTO tenant_snapshots VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (tenant) "
          "DO UPDATE SET version = excluded.version, seq = excluded.seq, mac = excluded.mac, "
          "state = excluded.state WHERE tenant_snapshots.version <> excluded.version "
          "OR tenant_snapshots.seq < excluded.seq")
# how a row's state is written (hashed into the version: a row written otherwise is never read)
FORMAT = "pickle5, AES-GCM with the row's fields as associated data"
PROJECTOR = "\x1fprojection-runner"  # the row of the projection runners' states (no tenant's id)
SELECT = "SELECT version, seq, mac, state FROM tenant_snapshots WHERE tenant = {p}"
DELETE = "DELETE FROM tenant_snapshots WHERE tenant IN ({p}, {p})"


FOLD = "domain.state"  # the fold and the state's classes: what made a snapshot's bytes


def fold_modules(package: Path, root: str = FOLD) -> list[Path]:
    """The source files of `root` and of every module of the domain package (`package`, its
    directory) that it imports, directly or not: what a fold runs and what a snapshot's pickle
    names. Read from the import statements (those inside functions too), not from what this
    process happened to import."""
    name = package.name
    seen: set[str] = set()
    todo = [name, root]
    while todo:
        module = todo.pop()
        path = _source(package, module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.split(".")[0] == name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    package_of = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    parent = package_of.split(".")[:len(package_of.split(".")) - node.level + 1]
                    base = ".".join([*parent, base]) if base else ".".join(parent)
                if base.split(".")[0] == name:
                    todo.append(base)  # and a name imported from it may be a module itself
                    todo.extend(f"{base}.{a.name}" for a in node.names)
    found = (_source(package, m) for m in seen)
    return sorted(p for p in found if p is not None)


def _source(package: Path, module: str) -> Path | None:
    parts = module.split(".")[1:]
    path = package.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path if path.is_file() else None


def fold_version(package: Path) -> str:
    """A hash of the fold's source (`fold_modules`), the Python version and the row format."""
    digest = hashlib.sha256(f"{sys.version_info[:2]} {FORMAT}".encode())
    for path in fold_modules(package):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


@functools.cache
def code_version() -> str:
    """The version of this process's fold: snapshots taken by another fold are never read."""
    return fold_version(Path(domain.__file__).parent)


def _head(tenant: str, version: str, seq: int) -> bytes:
    """The row's fields the snapshot is bound to (the GCM associated data)."""
    return f"{tenant}\0{version}\0{seq}\0".encode()


def _mac(key: bytes, head: bytes, blob: bytes | bytearray) -> bytes:
    """An HMAC of the row's fields, the nonce and the GCM tag (not of the whole blob: the tag
    authenticates that already, and hashing 100 MB cost a first command a tenth of a second)."""
    return hmac.new(key, head + blob[:12] + blob[-16:], hashlib.sha256).digest()


class SnapshotRows(Protocol):
    def read(self, tenant: str) -> tuple[str, int, bytes, bytes] | None: ...

    def write(self, tenant: str, version: str, seq: int, mac: bytes, blob: bytes | bytearray
              ) -> None: ...

    def delete(self, tenant: str) -> None:
        """Delete the tenant's row and the projection runners' row."""

    def close(self) -> None: ...


class Snapshots:
    """Take and restore signed snapshots; `every`: how many events a load must have folded
    from the log before it is worth a new snapshot."""

    def __init__(self, rows: SnapshotRows, key: bytes, every: int = 10_000) -> None:
        if len(key) < 16:
            raise ValueError("a snapshot key needs at least 16 bytes")
        self.rows, self.key, self.every = rows, key, every
        self._aes = AESGCM(hashlib.sha256(b"crmsync.snapshot.encryption\0" + key).digest())

    def discard(self, tenant: str) -> None:
        """L2: forget the snapshots that may hold an erased user's subjects."""
        self.rows.delete(tenant)

    def discard_projector(self) -> None:
        """Forget the projection runners' snapshot (an erasure raced it: L2)."""
        self.rows.delete(PROJECTOR)

    def restore(self, tenant: str) -> TenantState | None:
        """The newest snapshot of `tenant` that verifies and was taken by this code, else None."""
        found = self._thaw(tenant)
        if found is None:
            return None
        seq, state = found
        if not isinstance(state, TenantState) or state.tenant != tenant or state.seq != seq:
            return None
        return state

    def take(self, state: TenantState) -> int:
        """Store a snapshot of `state` (replacing an older one); returns its size in bytes."""
        return self._freeze(state.tenant, state.seq, state)

    def restore_projector(self) -> tuple[int, dict[str, TenantState]] | None:
        """A projection runner's folded states and the log position they are at, else None."""
        found = self._thaw(PROJECTOR)
        if found is None:
            return None
        position, states = found
        if not isinstance(states, dict) or not all(
                isinstance(t, str) and isinstance(s, TenantState) and s.tenant == t
                for t, s in states.items()):
            return None
        return position, states

    def take_projector(self, position: int, states: dict[str, TenantState]) -> int:
        """Store a projection runner's states at log `position`; returns the size in bytes."""
        return self._freeze(PROJECTOR, position, states)

    def _thaw(self, key: str) -> tuple[int, object] | None:
        found = self.rows.read(key)
        if found is None:
            return None
        version, seq, mac, blob = found
        head = _head(key, version, seq)
        if version != code_version() or len(blob) < 28 or not hmac.compare_digest(
                mac, _mac(self.key, head, blob)):
            return None
        try:
            plain = self._aes.decrypt(blob[:12], memoryview(blob)[12:], head)
            del found, blob  # the ciphertext's memory back before the state's is taken
            with paused_gc():
                return seq, pickle.loads(plain)  # authenticated under our key: ours
        except Exception:  # a snapshot is a cache: unreadable means fold from the log
            return None

    def _freeze(self, key: str, seq: int, value: object) -> int:
        with paused_gc():
            plain = pickle.dumps(value, protocol=5)
        version = code_version()
        head = _head(key, version, seq)
        nonce = os.urandom(12)
        # encrypted into the row's buffer: one copy of the state's bytes fewer at the peak
        blob = bytearray(len(nonce) + len(plain) + 16)
        blob[:12] = nonce
        self._aes.encrypt_into(nonce, plain, head, memoryview(blob)[12:])
        del plain
        self.rows.write(key, version, seq, _mac(self.key, head, blob), blob)
        return len(blob)

    def close(self) -> None:
        self.rows.close()
