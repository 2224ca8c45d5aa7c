"""E3/E4 for the thread memo of a build (projections.thread_memo): the rows and history versions a
build hands its store are the same whether a thread's messages and keys are carried from its last
time group or computed afresh, through every kind of event that changes messages in place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from histories import history

from domain import events as ev
from projections.build import build
from projections.history import BASES
from projections.ports import Changes, Stuck, StuckChanges, encode_doc
from projections.projector import Projector, ReplayLog
from projections.thread_memo import ThreadMemo
from runners.services.engine import Engine

T0 = datetime(2025, 3, 1, tzinfo=UTC)
TENANT = "acme"


class Recorded:
    """A view store that keeps each live key's last rows and every version, as bytes."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, ...], bytes] = {}

    def positions(self) -> dict[str, int]:
        return {}

    def write(self, changes: Changes, positions: Mapping[str, int], *, fresh: bool = False,
              stuck: StuckChanges | None = None) -> None:
        for p, keyed in changes.items():
            for (tenant, key), rows in keyed.items():
                if p in BASES:
                    for at, doc in rows.items():
                        self.kept[(p, tenant, key, at)] = encode_doc(doc)
                else:
                    self.kept[(p, tenant, key)] = encode_doc(rows)

    def stuck(self) -> dict[tuple[str, str], Stuck]:
        return {}

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        yield


def built(log: ReplayLog, budget: int) -> tuple[dict[tuple[str, ...], bytes], Projector]:
    projector = Projector()
    projector.versions.threads = ThreadMemo(budget)
    store = Recorded()
    build(log, store, projector, batch_size=3)  # time groups cut by batch ends too
    return store.kept, projector


def meta(minutes: int) -> dict[str, object]:
    return {"tenant": TENANT, "actor": "system:test", "correlation_id": "t",
            "occurred_at": T0 + timedelta(minutes=minutes)}


def synced(minute: int, mailbox: str, thread: str, mid: str, sender: str,
           subject: str = "hello", sent: int = 0) -> ev.MessageSynced:
    msg = ev.MailMessage(id=mid, message_id=f"<{mid}@x>", from_=sender, to=["u0@acme.test"],
                         subject=subject, body="b", labels=["INBOX"],
                         sent_at=T0 + timedelta(hours=sent or minute))
    return ev.MessageSynced(**meta(minute), mailbox=mailbox, thread=thread, message=msg)


def messages_changed_in_place() -> list[ev.DomainEvent]:
    """New messages in two threads, with each kind of in-place change between them: a flag, a
    deletion, a message synced again, a new record linking a thread, erased content; some at
    the same domain time as the messages around them."""
    return [
        ev.UserAdded(**meta(0), user="u0", email="u0@acme.test", role="admin", manager=None),
        ev.UserAdded(**meta(0), user="u1", email="u1@acme.test", role="member", manager="u0"),
        ev.MailboxConnected(**meta(1), mailbox="mb0", user="u0", provider="gmail",
                            address="u0@acme.test", scope={"mode": "all"}, backfill_days=30,
                            credentials_set=False),
        ev.ContactCreated(**meta(2), record="c0", owner="u1", name="C", kind="person",
                          emails=["x@ext.test"]),
        synced(3, "mb0", "mb0:t1", "m1", "x@ext.test"),
        synced(4, "mb0", "mb0:t1", "m2", "x@ext.test", sent=1),  # sent before m1
        synced(4, "mb0", "mb0:t2", "m3", "y@ext.test"),
        ev.MessageUpdated(**meta(5), mailbox="mb0", id="m1", read=True, labels=["work"]),
        synced(6, "mb0", "mb0:t1", "m4", "x@ext.test"),
        ev.MessageDeletedAtProvider(**meta(7), mailbox="mb0", id="m2"),
        synced(8, "mb0", "mb0:t1", "m5", "x@ext.test", sent=8),
        synced(8, "mb0", "mb0:t1", "m6", "x@ext.test", sent=8),  # same send time: thread order
        ev.LeadCreated(**meta(9), record="l0", owner="u1", name="L", emails=["y@ext.test"]),
        synced(10, "mb0", "mb0:t2", "m7", "y@ext.test"),
        synced(11, "mb0", "mb0:t1", "m4", "x@ext.test", subject="again"),  # synced again
        synced(12, "mb0", "mb0:t2", "m8", "y@ext.test"),
        ev.UserContentErased(**meta(13), user="u0"),
        synced(14, "mb0", "mb0:t1", "m9", "x@ext.test"),
        synced(15, "mb0", "mb0:t2", "m10", "y@ext.test"),
        synced(16, "mb0", "mb0:t2", "m11", "y@ext.test"),
    ]


def test_e3_thread_memo_rows_and_versions_equal_those_computed_afresh() -> None:
    log = ReplayLog(enumerate(messages_changed_in_place(), 1))
    with_memo, projector = built(log, budget=1000)
    afresh, _ = built(log, budget=0)
    assert with_memo == afresh
    assert projector.versions.threads.entries  # the memo was used, not only emptied
    # the scenario reaches the in-place changes: erased subjects after UserContentErased
    live = orjson.loads(with_memo[("mailbox", TENANT, "u0\x1fmb0:t1")])
    assert live["t"]["erased"] is True


@pytest.mark.parametrize("seed", range(4))
def test_e3_thread_memo_on_random_histories(seed: int) -> None:
    engine = Engine.open_in_memory()
    engine.apply_lines([orjson.dumps(c) for c in history(seed, length=200)])
    log = engine.stores().events
    with_memo, _ = built(log, budget=1000)  # type: ignore[arg-type]
    afresh, _ = built(log, budget=0)  # type: ignore[arg-type]
    assert with_memo == afresh


def test_thread_memo_holds_at_most_its_budget_of_messages() -> None:
    log = ReplayLog(enumerate(messages_changed_in_place(), 1))
    _, projector = built(log, budget=2)
    memo = projector.versions.threads
    assert memo.held == sum(len(m) for _, m, _ in memo.entries.values()) <= 2
