"""Snapshots are a cache of the log that is never trusted blindly (adapters.eventstore.snapshots):
a row changed in any field (tenant, version, seq, nonce, tag, mac, ciphertext, length) is
refused and the state folded from the log instead; one tenant's snapshot never restores for
another; a row of the format before (zlib, the tenant alone as associated data, the whole blob
hashed) is never read; a restored state equals the fold of the log, after erasure too (L2), and
the classes pickled by their fields (`domain.tenant.pickled_by_fields`) come back field for
field."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pickle
import zlib
from collections.abc import Callable

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from histories import history
from secret_mail import T0, erasure, head, secret_mail
from test_thread_memo import Recorded

import domain.tenant
from adapters.eventstore.snapshots import PROJECTOR, Snapshots, code_version
from adapters.eventstore.store import EventStore
from domain import events as ev
from domain.state import TenantState, evolve
from projections.projector import Projector, catch_up
from runners.entrypoints.projection_runner import keep, restore
from runners.services.engine import Engine

KEY = b"snapshot-test-secret-0123456789"
TENANT = "acme"
Row = tuple[str, int, bytes, bytes]


class MemoryRows:
    """Snapshot rows in a dict, kept as the SQL stores keep them (the newest seq wins)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def read(self, tenant: str) -> Row | None:
        return self.rows.get(tenant)

    def write(self, tenant: str, version: str, seq: int, mac: bytes, blob: bytes | bytearray
              ) -> None:
        old = self.rows.get(tenant)
        if old is None or old[0] != version or old[1] < seq:
            self.rows[tenant] = (version, seq, bytes(mac), bytes(blob))

    def delete(self, tenant: str) -> None:
        self.rows.pop(tenant, None)
        self.rows.pop(PROJECTOR, None)

    def close(self) -> None:
        pass


def engine_with_history(seed: int = 3, length: int = 120) -> Engine:
    engine = Engine.open_in_memory()
    engine.apply_lines([orjson.dumps(c) for c in history(seed, length=length)])
    return engine


def folded_from_the_log(store: EventStore, tenant: str = TENANT) -> TenantState:
    state = TenantState(tenant, message_content=False)  # as the command side keeps it
    for seq, event in store.tenant_events(tenant):
        evolve(state, event, seq)
    return state


def snapshotted(store: EventStore) -> tuple[Snapshots, MemoryRows]:
    rows = MemoryRows()
    snapshots = Snapshots(rows, KEY, every=1)
    snapshots.take(store.state(TENANT))
    return snapshots, rows


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


TAMPERS: dict[str, Callable[[Row], Row]] = {
    "version changed": lambda r: (r[0][:-1] + ("0" if r[0][-1] != "0" else "1"), *r[1:]),
    "seq + 1": lambda r: (r[0], r[1] + 1, r[2], r[3]),
    "seq - 1": lambda r: (r[0], r[1] - 1, r[2], r[3]),
    "mac first byte": lambda r: (r[0], r[1], _flip(r[2], 0), r[3]),
    "mac last byte": lambda r: (r[0], r[1], _flip(r[2], len(r[2]) - 1), r[3]),
    "mac empty": lambda r: (r[0], r[1], b"", r[3]),
    "nonce first byte": lambda r: (*r[:3], _flip(r[3], 0)),
    "nonce last byte": lambda r: (*r[:3], _flip(r[3], 11)),
    "ciphertext first byte": lambda r: (*r[:3], _flip(r[3], 12)),
    "ciphertext middle byte": lambda r: (*r[:3], _flip(r[3], len(r[3]) // 2)),
    "ciphertext last byte": lambda r: (*r[:3], _flip(r[3], len(r[3]) - 17)),
    "tag first byte": lambda r: (*r[:3], _flip(r[3], len(r[3]) - 16)),
    "tag last byte": lambda r: (*r[:3], _flip(r[3], len(r[3]) - 1)),
    "blob cut by one": lambda r: (*r[:3], r[3][:-1]),
    "blob cut to nonce and tag": lambda r: (*r[:3], r[3][:12] + r[3][-16:]),
    "blob grown by one": lambda r: (*r[:3], r[3] + b"\0"),
    "blob grown inside": lambda r: (*r[:3], r[3][:20] + b"\0" + r[3][20:]),
    "blob empty": lambda r: (*r[:3], b""),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_snapshot_row_tampered_in_any_field_is_refused_and_the_log_folded(
        tamper: str) -> None:
    engine = engine_with_history()
    store = engine.stores().events
    snapshots, rows = snapshotted(store)
    assert snapshots.restore(TENANT) == store.state(TENANT)  # the untouched row is read
    rows.rows[TENANT] = TAMPERS[tamper](rows.rows[TENANT])
    assert snapshots.restore(TENANT) is None
    store.snapshots, store._states = snapshots, {}
    assert store.state(TENANT) == folded_from_the_log(store)


def test_a_snapshot_of_one_tenant_never_restores_for_another() -> None:
    engine = Engine.open_in_memory()
    for tenant in ("acme", "beta"):
        engine.apply_lines([orjson.dumps(c) for c in history(5, length=60, tenant=tenant)])
    store = engine.stores().events
    rows = MemoryRows()
    snapshots = Snapshots(rows, KEY, every=1)
    snapshots.take(store.state("acme"))
    snapshots.take(store.state("beta"))
    acme, beta = rows.rows["acme"], rows.rows["beta"]
    assert snapshots.restore("beta") == store.state("beta")
    rows.rows["beta"] = acme  # acme's row, whole, under beta
    assert snapshots.restore("beta") is None
    rows.rows["beta"] = (beta[0], beta[1], acme[2], acme[3])  # acme's state, beta's position
    assert snapshots.restore("beta") is None
    rows.rows["beta"] = (beta[0], beta[1], beta[2], acme[3])  # acme's blob alone
    assert snapshots.restore("beta") is None
    rows.rows[PROJECTOR] = acme  # a tenant's row as the runners' one
    assert snapshots.restore_projector() is None
    assert Snapshots(rows, b"another-key-of-16-bytes").restore("acme") is None


def _old_format_row(state: TenantState, key: bytes, version: str) -> Row:
    """A row as snapshots were written before (zlib, the tenant alone as associated data, an
    HMAC of the whole blob)."""
    aes = AESGCM(hashlib.sha256(b"crmsync.snapshot.encryption\0" + key).digest())
    nonce = os.urandom(12)
    blob = nonce + aes.encrypt(nonce, zlib.compress(pickle.dumps(state, protocol=5), 1),
                               state.tenant.encode())
    head = f"{state.tenant}\0{version}\0{state.seq}\0".encode()
    return version, state.seq, hmac.new(key, head + blob, hashlib.sha256).digest(), blob


def _old_code_version() -> str:
    """`code_version` as it was before the format was hashed into it."""
    import sys
    from pathlib import Path

    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for path in sorted(Path(domain.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


@pytest.mark.parametrize("version", ["old", "current"])
def test_a_row_of_the_format_before_is_never_read(version: str) -> None:
    engine = engine_with_history(length=30)
    store = engine.stores().events
    state = store.state(TENANT)
    rows = MemoryRows()
    snapshots = Snapshots(rows, KEY)
    # under the version it was written with, and (were the format not hashed in) the current one
    rows.rows[TENANT] = _old_format_row(
        state, KEY, _old_code_version() if version == "old" else code_version())
    assert snapshots.restore(TENANT) is None
    store.snapshots, store._states = snapshots, {}
    assert store.state(TENANT) == folded_from_the_log(store)


@pytest.mark.parametrize("seed", range(6))
def test_e3_a_restored_state_equals_the_fold_of_the_log(seed: int) -> None:
    engine = engine_with_history(seed, length=150)  # with deletions (L2 erasure) among them
    store = engine.stores().events
    snapshots, _ = snapshotted(store)
    restored = snapshots.restore(TENANT)
    assert restored is not None
    assert restored == folded_from_the_log(store)
    # and a state restored, then folded on, equals the fold of the whole log
    engine.apply_lines([orjson.dumps(c) for c in history(seed + 100, length=60)[20:]])
    store.snapshots, store._states = snapshots, {}
    assert store.state(TENANT) == folded_from_the_log(store)


def test_l2_erasure_discards_the_snapshot_and_a_later_one_holds_no_erased_subject() -> None:
    store = EventStore.in_memory()
    rows = MemoryRows()
    store.snapshots = Snapshots(rows, KEY, every=1)
    store.append_raw(TENANT, 0, secret_mail(3))
    state = store.state(TENANT)  # folded 5 events: a snapshot is taken
    assert TENANT in rows.rows
    store.append(state, [head(ev.UserContentErased, user="u")])
    assert TENANT not in rows.rows  # discarded with the key
    store._states = {}
    erased = store.state(TENANT)  # folded from the log: a new snapshot, after the erasure
    assert erased == folded_from_the_log(store)
    assert TENANT in rows.rows
    restored = store.snapshots.restore(TENANT)
    assert restored == erased
    assert b"secret-subject" not in pickle.dumps(restored)


def _decorated() -> list[type]:
    return [c for c in vars(domain.tenant).values()
            if isinstance(c, type) and dataclasses.is_dataclass(c) and "__reduce__" in c.__dict__
            and c.__module__ == domain.tenant.__name__]


def test_classes_pickled_by_their_fields_come_back_field_for_field() -> None:
    found = _decorated()
    assert len(found) >= 6  # EventRef, User, Record, Push, Mailbox, OutboundRequest
    for cls in found:
        names = [f.name for f in dataclasses.fields(cls)]
        marked = cls(*(f"<{name}>" for name in names))  # each field its own marker
        copy = pickle.loads(pickle.dumps(marked, protocol=5))
        assert type(copy) is cls
        assert {n: getattr(copy, n) for n in names} == {n: f"<{n}>" for n in names}
        assert all(f.init and not f.kw_only for f in dataclasses.fields(cls)), cls


def test_objects_shared_in_the_state_stay_shared_once_restored() -> None:
    shared_ref = domain.tenant.EventRef(1, "UserAdded", T0, "ada")
    user = domain.tenant.User("u", "u@x.test", "member", None)
    user.levels["x"] = ("visible", shared_ref)
    users = {"u": user, "alias": user}
    copy = pickle.loads(pickle.dumps((users, shared_ref), protocol=5))
    assert copy[0]["u"] is copy[0]["alias"]
    assert copy[0]["u"].levels["x"][1] is copy[1]


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_the_runners_snapshot_tampered_in_any_field_is_refused(tamper: str) -> None:
    # its position is checked by nothing but the row's authentication: a position moved on
    # would skip the events between (no state's seq to compare it with, as a tenant's has)
    engine = engine_with_history(length=40)
    store = engine.stores().events
    rows = MemoryRows()
    snapshots = Snapshots(rows, KEY)
    states = {TENANT: store.state(TENANT)}
    snapshots.take_projector(77, states)
    assert snapshots.restore_projector() == (77, states)
    rows.rows[PROJECTOR] = TAMPERS[tamper](rows.rows[PROJECTOR])
    assert snapshots.restore_projector() is None


class RacingRows(MemoryRows):
    """Snapshot rows whose first write lets another process act first (`before_write`): the
    moment between a state folded and its snapshot stored."""

    def __init__(self) -> None:
        super().__init__()
        self.before_write: Callable[[], None] | None = None

    def write(self, tenant: str, version: str, seq: int, mac: bytes, blob: bytes | bytearray
              ) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        super().write(tenant, version, seq, mac, blob)


def test_l2_a_snapshot_taken_while_its_user_is_erased_never_keeps_their_subjects(
        tmp_path: object) -> None:
    db = f"{tmp_path}/crm.db"
    rows = RacingRows()
    one, other = EventStore.sqlite(db), EventStore.sqlite(db)  # two processes, one store
    try:
        one.snapshots = Snapshots(rows, KEY, every=1)
        one.append_raw(TENANT, 0, secret_mail())
        one._states = {}

        def erase_meanwhile() -> None:  # DeleteUser in the other process: appended, key
            state = other.state(TENANT)  # destroyed, snapshots discarded
            other.snapshots = Snapshots(rows, KEY, every=1)
            other.append(state, erasure())

        rows.before_write = erase_meanwhile
        one.state(TENANT)  # folds the 3 events, then stores their snapshot
        assert other.keys.destroyed(TENANT, "u")
        kept = Snapshots(rows, KEY).restore(TENANT)
        # discarded: the erasure is after it (a command-side state holds no subject at all,
        # so a check of its bytes for one could not fail)
        assert kept is None
        one._states = {}
        assert one.state(TENANT) == folded_from_the_log(one)
    finally:
        one.close()
        other.close()


def test_l2_a_runners_snapshot_taken_while_a_user_is_erased_never_keeps_their_subjects() -> None:
    engine = Engine.open_in_memory()
    store = engine.stores().events
    rows = RacingRows()
    store.snapshots = Snapshots(rows, KEY, every=1)
    store.append_raw(TENANT, 0, secret_mail())
    projector = Projector()
    read = catch_up(store, Recorded(), projector)  # type: ignore[arg-type]

    def erase_meanwhile() -> None:  # DeleteUser elsewhere: appended, key destroyed, discarded
        store.append(store.state(TENANT), erasure())

    rows.before_write = erase_meanwhile
    keep(engine, projector, read)  # the runner's states folded before the erasure
    assert store.keys.destroyed(TENANT, "u")
    kept = Snapshots(rows, KEY).restore_projector()
    assert kept is None or b"secret-subject" not in pickle.dumps(kept)


def test_l2_a_snapshot_left_by_a_process_killed_before_its_erasure_check_is_discarded_on_restore(
) -> None:
    # the erasing process appended, destroyed the key and discarded the snapshots; then a load
    # that had folded before the erasure wrote its snapshot and was killed before looking
    store = EventStore.in_memory()
    rows = MemoryRows()
    store.snapshots = Snapshots(rows, KEY, every=10)  # too few events to take one here
    store.append_raw(TENANT, 0, secret_mail())
    before = store.state(TENANT)
    folded_before = pickle.loads(pickle.dumps(before))
    store.append(before, erasure())  # discards
    store.snapshots.take(folded_before)  # seq 3, the secret subject in it; then killed
    assert TENANT in rows.rows
    store._states = {}
    state = store.state(TENANT)  # restored from it, the erasure folded on
    assert state == folded_from_the_log(store)
    assert TENANT not in rows.rows
    store._states = {}
    assert store.state(TENANT) == state  # folded from the log now


def test_l2_a_runners_snapshot_left_by_a_runner_killed_before_its_erasure_check_is_discarded(
) -> None:
    engine = Engine.open_in_memory()
    store = engine.stores().events
    store.append_raw(TENANT, 0, secret_mail())
    projector = Projector()
    catch_up(store, Recorded(), projector)  # type: ignore[arg-type]
    rows = MemoryRows()
    store.snapshots = Snapshots(rows, KEY)
    store.append(store.state(TENANT), erasure())  # discards
    # the runner's states, folded before the erasure, written after its discard; then killed
    store.snapshots.take_projector(projector.position, projector.states)
    restarted = Projector()
    restore(engine, restarted)  # the states before the erasure, to fold on from
    assert restarted.position == projector.position
    assert PROJECTOR not in rows.rows
