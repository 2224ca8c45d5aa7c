"""A history version equal to the key's last one is not written (projections.versions): the
memo of each key's last version, a table of numbers per tenant, answers as a dict of each
key's last rows would, up to its bound."""

from __future__ import annotations

import random

from projections.versions import LastVersions


def _rows(n: int) -> dict[str, dict[str, object]]:
    return {"t": {"thread": "t1", "messages": n}}


def test_a_version_equal_to_the_keys_last_one_is_skipped_and_a_changed_one_is_not() -> None:
    memo = LastVersions()
    assert not memo.same("acme", "thread", "t1", _rows(1))  # first version: written
    assert memo.same("acme", "thread", "t1", _rows(1))
    assert not memo.same("acme", "thread", "t1", _rows(2))
    assert not memo.same("acme", "thread", "t1", _rows(1))  # back to an earlier one: written
    assert memo.same("acme", "thread", "t1", {"t": {"messages": 1, "thread": "t1"}})  # key order


def test_keys_projections_and_tenants_are_remembered_apart() -> None:
    memo = LastVersions()
    for tenant, projection, key in [("acme", "thread", "t1"), ("acme", "explain", "t1"),
                                    ("acme", "thread", "t2"), ("beta", "thread", "t1")]:
        assert not memo.same(tenant, projection, key, _rows(1))
    assert len(memo) == 4
    assert memo.same("beta", "thread", "t1", _rows(1))


def test_the_memo_answers_as_a_dict_of_last_rows_while_its_tables_grow() -> None:
    rng = random.Random(7)
    memo = LastVersions()
    last: dict[tuple[str, str, str], dict[str, dict[str, object]]] = {}
    for _ in range(20_000):
        mark = (rng.choice(["acme", "beta"]), rng.choice(["thread", "mailbox"]),
                f"k{rng.randrange(3000)}")
        rows = _rows(rng.randrange(3))
        assert memo.same(*mark, rows) == (last.get(mark) == rows)
        last[mark] = rows
    assert len(memo) == len(last)


def test_forgetting_a_tenant_writes_its_next_versions_and_keeps_the_others() -> None:
    memo = LastVersions()
    memo.same("acme", "thread", "t1", _rows(1))
    memo.same("beta", "thread", "t1", _rows(1))
    memo.forget("acme")
    assert len(memo) == 1
    assert not memo.same("acme", "thread", "t1", _rows(1))
    assert memo.same("beta", "thread", "t1", _rows(1))


def test_past_its_bound_the_memo_starts_again_from_the_new_key() -> None:
    memo = LastVersions(bound=3)
    for key in ("a", "b", "c"):
        memo.same("acme", "thread", key, _rows(1))
    assert not memo.same("acme", "thread", "d", _rows(1))  # the fourth key: all forgotten
    assert len(memo) == 1
    assert memo.same("acme", "thread", "d", _rows(1))
    assert not memo.same("acme", "thread", "a", _rows(1))
