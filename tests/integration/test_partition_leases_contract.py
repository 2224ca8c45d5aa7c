"""One contract for the partition leases (tenant affinity, issue #15): the fake and PostgreSQL
advisory locks. A lease lives as long as its worker: a worker that dies (its PostgreSQL
session killed, not closed politely) leaves its partitions to the others at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sync_fakes import FakeLeases, FakeLeaseTable

from adapters.deliveries.partition_leases_postgres import PostgresLeases
from adapters.deliveries.partitions import PartitionLeases

pytestmark = pytest.mark.integration

# a new worker's leases; the worker dying (not leaving)
Backend = tuple[Callable[[], PartitionLeases], Callable[[PartitionLeases], None]]


@pytest.fixture(params=["fake", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made: list[PartitionLeases] = []
    if request.param == "fake":
        table = FakeLeaseTable()

        def new_fake() -> PartitionLeases:
            made.append(FakeLeases(table))
            return made[-1]

        def die_fake(leases: PartitionLeases) -> None:
            leases.close()

        yield new_fake, die_fake
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        group = f"g{uuid.uuid4().hex[:8]}"

        def new_pg() -> PartitionLeases:
            made.append(PostgresLeases(url, group))
            return made[-1]

        def die_pg(leases: PartitionLeases) -> None:
            assert isinstance(leases, PostgresLeases) and leases._conn is not None
            pid = leases._conn.info.backend_pid
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))

        yield new_pg, die_pg
    for leases in made:
        leases.close()


def soon(check: Callable[[], bool]) -> bool:
    for _ in range(100):
        if check():
            return True
        time.sleep(0.05)
    return False


def test_live_workers_are_ranked_alike_and_a_partition_has_one_holder(backend: Backend
                                                                      ) -> None:
    new, _ = backend
    a, b, c = new(), new(), new()
    for w in (a, b, c):
        w.members()  # joins
    assert [w.members() for w in (a, b, c)] == [(0, 3), (1, 3), (2, 3)]
    assert a.take(5) and a.take(5)  # taking it again changes nothing
    assert not b.take(5) and not c.take(5)
    a.release(5)
    assert b.take(5) and not a.take(5)
    b.release(5)
    b.release(5)
    assert c.take(5)


def test_a_workers_leases_go_to_the_others_when_it_leaves_or_dies(backend: Backend) -> None:
    new, die = backend
    a, b, c = new(), new(), new()
    for w in (a, b, c):
        w.members()
    assert a.take(1) and b.take(2)
    a.close()  # leaving
    # a closed or killed session's locks go when its server process ends, just after
    assert soon(lambda: [b.members(), c.members()] == [(0, 2), (1, 2)])
    assert c.take(1)
    die(b)  # dying: its session ends without a word
    assert soon(lambda: c.members() == (0, 1))
    assert c.take(2)
    d = new()
    assert d.members() == (0, 2) and c.members() == (1, 2)  # the freed first slot
