"""E3/E4 against the projector's two memos (projections.thread_memo, projections.versions): on
any sequence of mail and record events, cut into time groups and batches anyhow, the rows and
history versions handed to the store are those computed without the memos, by a build and by
the runners' incremental catch-up alike; the memo of each key's last version never skips a
version that differs from the key's last one, through forgetting and its bound, and its table
finds every key whatever bits their hashes share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_thread_memo import Recorded

from domain import events as ev
from projections.build import build
from projections.projector import Projector, ReplayLog, catch_up
from projections.thread_memo import ThreadMemo
from projections.versions import LastVersions, _Table

T0 = datetime(2025, 3, 1, tzinfo=UTC)
TENANT = "acme"
MAILBOXES = {"mb0": "u0", "mb1": "u1"}
ADDRESSES = ["x@ext.test", "y@ext.test", "z@ext.test"]


def meta(minute: int) -> dict[str, Any]:
    return {"tenant": TENANT, "actor": "system:test", "correlation_id": "t",
            "occurred_at": T0 + timedelta(minutes=minute)}


def opening() -> list[ev.DomainEvent]:
    return [
        ev.UserAdded(**meta(0), user="u0", email="u0@acme.test", role="admin", manager=None),
        ev.UserAdded(**meta(0), user="u1", email="u1@acme.test", role="member", manager="u0"),
        *(ev.MailboxConnected(**meta(0), mailbox=mb, user=user, provider="gmail",
                              address=f"{user}@acme.test", scope={"mode": "all"},
                              backfill_days=30, credentials_set=False)
          for mb, user in MAILBOXES.items())]


@st.composite
def mail_histories(draw: st.DrawFn) -> list[ev.DomainEvent]:
    """Events as a tenant's log holds them: new messages (often), each kind of in-place change
    between them, at times that often repeat (one time group over several events). (A
    message synced again keeps its thread, and erasure comes with the user's deletion, as the
    command side writes them.)"""
    events = opening()
    minute = 1
    held: dict[str, list[str]] = {mb: [] for mb in MAILBOXES}  # live message ids per mailbox
    threads: dict[str, str] = {}  # message id -> its thread
    erased: set[str] = set()
    records = 0
    for n in range(draw(st.integers(1, 40))):
        if draw(st.booleans()):
            minute += 1
        at = meta(minute)
        mb = draw(st.sampled_from(["mb1"] if erased else sorted(MAILBOXES)))
        kind = draw(st.sampled_from(["new"] * 6 + ["again", "update", "delete", "record",
                                                   "sent", "erase"]))
        sent = T0 + timedelta(hours=draw(st.integers(0, 5)))  # send times tie often
        thread = f"{mb}:t{draw(st.integers(0, 2))}"
        sender = draw(st.sampled_from(ADDRESSES))
        if kind in ("again", "update", "delete") and held[mb]:
            mid = draw(st.sampled_from(held[mb]))
            if kind == "again":  # synced again in its thread (the log of a store written
                # before S14 held such; never into another thread), its content changed
                events.append(ev.MessageSynced(**at, mailbox=mb, thread=threads[mid], message=(
                    ev.MailMessage(id=mid, from_=sender, to=["u0@acme.test"],
                                   subject=f"again {n}", sent_at=sent, labels=["INBOX"]))))
            elif kind == "update":
                events.append(ev.MessageUpdated(**at, mailbox=mb, id=mid, read=True,
                                                labels=[f"l{n % 2}"]))
            else:
                events.append(ev.MessageDeletedAtProvider(**at, mailbox=mb, id=mid))
                held[mb].remove(mid)
        elif kind == "record":
            records += 1
            events.append(ev.ContactCreated(**at, record=f"c{records}", owner="u1",
                                            name="C", kind="person", emails=[sender]))
        elif kind == "erase" and not erased:  # DeleteUser of u0 (L2): its mail leaves
            erased.add("u0")
            events += [ev.UserDeleted(**at, user="u0"), ev.UserContentErased(**at, user="u0")]
        else:
            mid = f"m{n}"
            message = ev.MailMessage(id=mid, message_id=f"<{mid}@x>", from_=sender,
                                     to=["u0@acme.test"], subject=f"s{n}", sent_at=sent,
                                     labels=["INBOX"])
            if kind == "sent":
                events.append(ev.EmailSent(**at, user=MAILBOXES[mb], mailbox=mb, kind="single",
                                           thread=thread, message=message))
            else:
                events.append(ev.MessageSynced(**at, mailbox=mb, thread=thread, message=message))
            held[mb].append(mid)
            threads[mid] = thread
    return events


def kept(events: list[ev.DomainEvent], budget: int, batch: int, incremental: bool
         ) -> dict[tuple[str, ...], bytes]:
    log = ReplayLog(enumerate(events, 1))
    projector = Projector()
    projector.versions.threads = ThreadMemo(budget)
    store = Recorded()
    if incremental:  # the runners' way: every batch's live rows and versions written
        catch_up(log, store, projector, batch_size=batch)  # type: ignore[arg-type]
    else:
        build(log, store, projector, batch_size=batch)
    return store.kept


@settings(max_examples=150, deadline=None)
@given(mail_histories(), st.sampled_from([1, 2, 5, 1000]), st.sampled_from([1, 3, 50]),
       st.booleans())
def test_e3_thread_memo_rows_and_versions_equal_those_computed_afresh_on_any_history(
        events: list[ev.DomainEvent], budget: int, batch: int, incremental: bool) -> None:
    assert kept(events, budget, batch, incremental) == kept(events, 0, batch, incremental)


@settings(max_examples=80, deadline=None)
@given(mail_histories(), st.sampled_from([1, 3, 50]))
def test_e4_incremental_rows_and_versions_equal_a_builds_with_the_memos(
        events: list[ev.DomainEvent], batch: int) -> None:
    # the live rows a build writes from its final state (a key emptied on the way is written
    # empty by the runner, not at all by a build); the histories as the answers they give at
    # each time (a version equal to the one before it, which a batch's end can leave at a
    # time a later event of the same time changes back, answers nothing new)
    assert answers(kept(events, 1000, batch, True)) == answers(kept(events, 1000, 1000, False))


def answers(rows: dict[tuple[str, ...], bytes]) -> dict[tuple[str, ...], object]:
    out: dict[tuple[str, ...], object] = {}
    histories: dict[tuple[str, ...], list[tuple[str, bytes]]] = {}
    for k, v in sorted(rows.items()):
        if len(k) == 3:
            if v != b"{}":
                out[k] = v
        else:
            histories.setdefault(k[:3], []).append((k[3], v))
    for k, versions in histories.items():
        steps: list[tuple[str, bytes]] = []
        for at, v in versions:  # sorted by time: fixed-width text
            if (steps[-1][1] if steps else b"{}") != v:
                steps.append((at, v))
        if steps:
            out[k] = steps
    return out


# -- the memo of each key's last version, against the dict it stands for
operations = st.lists(st.one_of(
    st.tuples(st.just("same"), st.sampled_from(["acme", "beta"]),
              st.sampled_from(["thread", "mailbox"]), st.sampled_from([f"k{i}" for i in range(8)]),
              st.integers(0, 2)),
    st.tuples(st.just("forget"), st.sampled_from(["acme", "beta"]))), max_size=200)


@settings(max_examples=200, deadline=None)
@given(operations, st.sampled_from([1, 2, 3, 5, 100]))
def test_a_version_is_skipped_only_when_it_equals_the_keys_last_one_through_forget_and_bound(
        ops: list[tuple[Any, ...]], bound: int) -> None:
    memo = LastVersions(bound)
    last: dict[tuple[str, str, str], int] = {}  # what was last written per key
    model: dict[tuple[str, str, str], int] = {}  # the memo as documented: up to `bound` keys
    for op in ops:
        if op[0] == "forget":
            memo.forget(op[1])
            model = {k: v for k, v in model.items() if k[0] != op[1]}
            continue
        _, tenant, projection, key, n = op
        mark = (tenant, projection, key)
        skipped = memo.same(tenant, projection, key, {"t": {"n": n}})
        if skipped:  # E4: never a version that differs from the key's last one
            assert last.get(mark) == n
        else:
            last[mark] = n
        assert skipped == (model.get(mark) == n)
        if mark not in model and len(model) + 1 > bound:
            model = {}  # full: all forgotten, this key kept
        model[mark] = n
        assert len(memo) == len(model)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 3), st.integers(0, 2**64 - 1)),
                max_size=300), st.sampled_from([0, 4, 20, 59]))
def test_the_version_table_finds_every_key_whatever_bits_their_hashes_share(
        ops: list[tuple[int, int, int]], shift: int) -> None:
    # tags that differ only above `shift`: all probe from the same slot or a few (wrapping
    # around the table's end), through every doubling
    table = _Table()
    model: dict[int, int] = {}
    for high, low, digest in ops:
        tag = (((high + 1) << shift) | low) & ((1 << 64) - 1) or 1
        assert table.swap(tag, digest) == model.get(tag)
        model[tag] = digest
        assert table.used == len(model)
    for tag, digest in model.items():
        assert table.swap(tag, digest) == digest
