"""E3 for a build partitioned by mailbox: the parts' rows together equal a build in one process,
whatever the number of parts, and parts that catch up after their build still agree."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from histories import history

from adapters.views.memory import MemoryViews
from domain import events as ev
from domain.state import TenantState
from projections.build import build, extend
from projections.partition import Partition
from projections.projector import Projector
from projections.rows import PROJECTIONS
from runners.services.engine import Engine

TENANT = "acme"


def engine_with(seed: int, length: int = 160) -> Engine:
    engine = Engine.open_in_memory()
    engine.apply_lines([orjson.dumps(c) for c in history(seed, length=length)])
    return engine


def partitioned(engine: Engine, parts: int, target: int, end: int | None = None
                ) -> tuple[MemoryViews, list[Projector]]:
    views, log = MemoryViews(), engine.stores().events
    projectors = []
    for index in range(parts):
        projector = Projector(partition=Partition(index, parts))
        build(log, views, projector, batch_size=7, target=target, set_positions=False)
        if end is not None:
            extend(log, views, projector, end, batch_size=5)
        projectors.append(projector)
    views.write({}, {p: end or target for p in PROJECTIONS})
    return views, projectors


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("parts", [2, 3])
def test_e3_partitioned_build_equals_one_build(seed: int, parts: int) -> None:
    engine = engine_with(seed)
    end = engine.head()
    live = engine.checksums()
    views, projectors = partitioned(engine, parts, end)
    assert {p: views.checksum(p) for p in PROJECTIONS} == live
    total = len(engine.state(TENANT).messages)
    held = [len(p.states[TENANT].messages) for p in projectors]
    assert sum(held) == total  # each message folded by exactly one part
    if parts == 3:  # the history's three mailboxes fall into three different parts
        assert all(0 < n < total for n in held)


@pytest.mark.parametrize("seed", range(3))
def test_e3_parts_that_catch_up_after_their_build_equal_one_build(seed: int) -> None:
    engine = engine_with(seed)
    end = engine.head()
    views, _ = partitioned(engine, 2, end // 2, end)
    assert {p: views.checksum(p) for p in PROJECTIONS} == \
        engine.checksums()


def test_the_filter_before_decoding_keeps_every_part_its_own_mail_and_everything_else() -> None:
    mine, theirs = Partition(0, 2), Partition(1, 2)
    box = next(f"mb{i}" for i in range(10) if mine.owns_mailbox(f"mb{i}"))
    data = orjson.dumps({"tenant": TENANT, "mailbox": box, "thread": f"{box}:t"})
    assert mine.keeps(ev.MessageSynced, data) and not theirs.keeps(ev.MessageSynced, data)
    assert mine.keeps(ev.UserAdded, b"not even read") and theirs.keeps(ev.UserAdded, b"")
    assert mine.owns_key("directory", "user:u1") and not theirs.owns_key("directory", "user:u1")
    assert mine.owns_key("sync_status", box) and not theirs.owns_key("sync_status", box)


def test_a_thread_mark_is_narrowed_to_the_parts_threads() -> None:
    engine = engine_with(2)
    state = engine.state(TENANT)
    part = Partition(0, 3)
    own = [t for t, th in state.threads.items() if part.owns_mailbox(th.mailbox)]
    other = [t for t, th in state.threads.items() if not part.owns_mailbox(th.mailbox)]
    assert own and other
    held = TenantState(TENANT)
    for tid in own:
        thread = state.threads[tid]
        held.threads.create(tid, thread.mailbox, thread.created_seq, thread.crm_initiated)
    mark = ev.ThreadMarked(tenant=TENANT, actor="u0", occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                           correlation_id="c", user="u0", threads=[own[0], other[0]], shared=True)
    narrowed = part.admit(held, mark)
    assert isinstance(narrowed, ev.ThreadMarked) and narrowed.threads == [own[0]]
    assert part.admit(held, mark.model_copy(update={"threads": [other[0]]})) is None


def test_a_part_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Partition(2, 2)


def test_the_mailbox_is_read_from_stored_json_as_orjson_reads_it() -> None:
    from projections.partition import MAILBOX_MAIL, _stored_mailbox

    plain = (str, str | None)
    for kind in MAILBOX_MAIL:  # what lets the first marker be the event's own field
        names = list(kind.model_fields)
        before = names[:names.index("mailbox")]
        assert all(kind.model_fields[n].annotation in (*plain, datetime) for n in before), kind
    for box in ["mb1", 'mb"q', "mb\\\\x", "mailbox-ü-☃", "a\u2028b", ""]:
        data = orjson.dumps({"tenant": 't"mailbox":"x', "command_id": None, "mailbox": box,
                             "message": {"mailbox": "other"}})
        assert _stored_mailbox(data) == box == orjson.loads(data)["mailbox"]
    assert _stored_mailbox(b'{"tenant":"t"}') is None


def test_balanced_parts_take_mailboxes_largest_first_to_the_least_loaded() -> None:
    from projections.partition import balanced

    sizes = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10, "f": 10}
    assigned = balanced(sizes, 2)
    loads = [sum(n for m, n in sizes.items() if assigned[m] == i) for i in range(2)]
    assert sorted(loads) == [80, 80] and set(assigned) == set(sizes)
    assert balanced(sizes, 2) == assigned  # deterministic
    assert balanced({}, 3) == {}
    parts = [Partition(i, 2, assigned) for i in range(2)]
    assert all(sum(p.owns_mailbox(m) for p in parts) == 1 for m in [*sizes, "new-mailbox"])


@pytest.mark.parametrize("seed", range(3))
def test_e3_parts_with_an_assignment_equal_one_build(seed: int) -> None:
    engine = engine_with(seed)
    end = engine.head()
    views, log = MemoryViews(), engine.stores().events
    for index in range(2):  # mb0 alone in part 1, the rest (and anything new) by hash
        build(log, views, Projector(partition=Partition(index, 2, {"mb0": 1})),
              batch_size=9, target=end, set_positions=False)
    views.write({}, dict.fromkeys(PROJECTIONS, end))
    assert {p: views.checksum(p) for p in PROJECTIONS} == \
        engine.checksums()
