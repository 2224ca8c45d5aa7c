"""The per-delivery clock of `benchmarks.sync_throughput --rate` (issue #15): when a push counts
as durable and as visible. Fed by hand: no database, no thread."""

from __future__ import annotations

from benchmarks.delivery_latency import DeliveryClock, percentile


def clock() -> DeliveryClock:
    return DeliveryClock("unused", {"a@x.test": "mbx0", "b@x.test": "mbx1"}, poll=False)


def test_a_delivery_is_visible_only_once_its_covering_cursor_is_projected() -> None:
    c = clock()
    c.accepted("a@x.test", 10, at=0.0)
    c.cursor_seen("mbx0", 5, position=7, now=1.0)  # a page short of the push's head
    c.projected_to(100, now=1.5)
    assert c.outstanding() == 1
    c.cursor_seen("mbx0", 10, position=12, now=2.0)
    c.projected_to(11, now=2.5)  # the runner has not passed the cursor event yet
    assert c.outstanding() == 1
    c.projected_to(12, now=3.0)
    assert c.outstanding() == 0
    assert c.stop().durable == [2.0] and c.result.visible == [3.0]


def test_a_later_cursor_covers_earlier_pushes_of_its_mailbox_only() -> None:
    c = clock()
    c.accepted("a@x.test", 10, at=0.0)
    c.accepted("a@x.test", 20, at=1.0)
    c.accepted("b@x.test", 10, at=1.0)
    c.cursor_seen("mbx0", 20, position=30, now=4.0)  # one sync took both pushes
    c.projected_to(30, now=5.0)
    assert sorted(c.result.visible) == [4.0, 5.0]
    assert c.outstanding() == 1  # b's push is not covered by a's cursor


def test_a_head_synced_before_its_push_was_answered_is_durable_at_once() -> None:
    c = clock()
    c.cursor_seen("mbx0", 10, position=9, now=1.0)
    c.accepted("a@x.test", 10, at=2.0)
    c.projected_to(9, now=2.5)
    assert c.result.durable == [0.0] and c.result.visible == [0.5]


def test_percentile_takes_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0 and percentile(values, 50) == 51.0
