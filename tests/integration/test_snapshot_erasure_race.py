"""L2 against snapshots, on the real stores: a DeleteUser in another process that lands between
a load's fold and the write of its snapshot (its discard before that write) never leaves a
snapshot holding the erased user's subjects; the state is then folded from the log. SQLite and
PostgreSQL (the tenant's stream read ahead there)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from secret_mail import TENANT, erasure, secret_mail

from adapters.eventstore.snapshots import Snapshots
from adapters.eventstore.snapshots_postgres import PostgresSnapshotRows
from adapters.eventstore.snapshots_sqlite import SqliteSnapshotRows
from adapters.eventstore.store import EventStore
from domain.state import TenantState, evolve

pytestmark = pytest.mark.integration
KEY = b"snapshot-test-secret-0123456789"


def racing(rows_class: type) -> type:
    class Racing(rows_class):  # type: ignore[misc, valid-type]
        """The rows, whose first write lets another process act first."""

        before_write: Callable[[], None] | None = None

        def write(self, *args: object) -> None:
            hook, self.before_write = self.before_write, None
            if hook is not None:
                hook()
            super().write(*args)

    return Racing


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path
           ) -> Iterator[tuple[EventStore, EventStore, object]]:
    if request.param == "sqlite":
        db = str(tmp_path / "crm.db")
        one, other = EventStore.sqlite(db), EventStore.sqlite(db)
        rows = racing(SqliteSnapshotRows)(db)
    else:
        env = request.getfixturevalue("postgres_env")
        one, other = EventStore(env), EventStore(env)
        rows = racing(PostgresSnapshotRows)(request.getfixturevalue("postgres_url"))
    yield one, other, rows
    one.close()
    other.close()


def test_l2_a_snapshot_taken_while_its_user_is_erased_never_keeps_their_subjects(
        stores: tuple[EventStore, EventStore, object]) -> None:
    one, other, rows = stores
    one.snapshots = Snapshots(rows, KEY, every=1)  # type: ignore[arg-type]
    one.append_raw(TENANT, 0, secret_mail(3))
    one._states = {}

    def erase_meanwhile() -> None:  # DeleteUser elsewhere: appended, key destroyed, discarded
        state = other.state(TENANT)
        other.snapshots = Snapshots(rows, KEY, every=1)  # type: ignore[arg-type]
        other.append(state, erasure())

    rows.before_write = erase_meanwhile  # type: ignore[attr-defined]
    one.state(TENANT)
    assert other.keys.destroyed(TENANT, "u")
    kept = Snapshots(rows, KEY).restore(TENANT)  # type: ignore[arg-type]
    # discarded: the erasure is after it (a command-side state holds no subject at all,
    # so a check of its bytes for one could not fail)
    assert kept is None
    one._states = {}
    folded = TenantState(TENANT, message_content=False)  # as the command side keeps it
    for seq, event in one.tenant_events(TENANT):
        evolve(folded, event, seq)
    assert one.state(TENANT) == folded
