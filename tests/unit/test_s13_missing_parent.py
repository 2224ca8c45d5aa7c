"""S13 (amended, issue #13 point 6): replies to the same missing parent share one thread, jwz-style,
still never by subject, loop-safe and the same whatever the batch boundaries and on rebuild (E3)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rulekit import CUSTOMER, T0, TENANT, apply, msg, office, thread_of

from adapters.providers.mime import parse_message
from domain.commands import parse_command
from domain.state import TenantState, evolve
from runners.services.engine import Engine

ANN = "ann@acme.test"


def threads(state: TenantState, *mids: str) -> list[str]:
    return [thread_of(state, "mb-ann", m).id for m in mids]


def test_s13_replies_to_one_missing_parent_share_a_thread() -> None:
    state = apply([*office(),
                   msg("mb-ann", "r1", CUSTOMER, [ANN], message_id="<r1@x>",
                       in_reply_to="<gone@x>", references=["<gone@x>"]),
                   msg("mb-ann", "r2", ANN, [CUSTOMER], message_id="<r2@x>",
                       in_reply_to="<gone@x>", references=["<gone@x>"]),
                   msg("mb-ann", "r3", CUSTOMER, [ANN], message_id="<r3@x>",
                       references=["<gone@x>"])])
    first, second, third = threads(state, "r1", "r2", "r3")
    assert first == second == third
    assert state.threads[first].messages == ["r1", "r2", "r3"]


def test_s13_shared_missing_grandparent_groups_cousins() -> None:
    """Two replies to two different missing messages of one missing root: one thread."""
    state = apply([*office(),
                   msg("mb-ann", "a", CUSTOMER, [ANN], message_id="<a@x>",
                       in_reply_to="<p1@x>", references=["<root@x>", "<p1@x>"]),
                   msg("mb-ann", "b", CUSTOMER, [ANN], message_id="<b@x>",
                       in_reply_to="<p2@x>", references=["<root@x>", "<p2@x>"])])
    assert len(set(threads(state, "a", "b"))) == 1


def test_s13_the_missing_parent_arriving_later_joins_the_thread() -> None:
    state = apply([*office(),
                   msg("mb-ann", "r1", CUSTOMER, [ANN], message_id="<r1@x>",
                       in_reply_to="<gone@x>"),
                   msg("mb-ann", "p", ANN, [CUSTOMER], message_id="<gone@x>"),
                   msg("mb-ann", "r2", CUSTOMER, [ANN], message_id="<r2@x>",
                       in_reply_to="<gone@x>")])
    assert len(set(threads(state, "r1", "p", "r2"))) == 1
    assert ("mb-ann", "<gone@x>") in state.rfc_index  # found now as a real message
    assert ("mb-ann", "<gone@x>") not in state.missing_parents


def test_s13_missing_parents_do_not_cross_mailboxes_or_group_by_subject() -> None:
    state = apply([*office(),
                   msg("mb-ann", "r1", CUSTOMER, [ANN], in_reply_to="<gone@x>", subject="Offer"),
                   msg("mb-ann", "r2", CUSTOMER, [ANN], in_reply_to="<other@x>", subject="Offer"),
                   msg("mb-ann", "r3", CUSTOMER, [ANN], subject="Re: Offer")])
    assert len(set(threads(state, "r1", "r2", "r3"))) == 3
    assert ("mb-ann", "<gone@x>") in state.missing_parents
    assert not any(mbx != "mb-ann" for mbx, _ in state.missing_parents)


def test_s13_missing_parent_reference_loops_are_safe() -> None:
    state = apply([*office(),
                   msg("mb-ann", "m1", CUSTOMER, [ANN], message_id="<x@l>",
                       in_reply_to="<y@l>", references=["<y@l>", "<x@l>"]),
                   msg("mb-ann", "m2", CUSTOMER, [ANN], message_id="<y@l>",
                       in_reply_to="<x@l>", references=["<x@l>", "<y@l>"]),
                   msg("mb-ann", "m3", CUSTOMER, [ANN], message_id="<z@l>",
                       in_reply_to="<z@l>", references=["<z@l>"])])
    m1, m2, m3 = threads(state, "m1", "m2", "m3")
    assert m1 == m2 != m3
    assert ("mb-ann", "<z@l>") not in state.missing_parents  # its own id is not its parent


def test_s13_a_missing_parent_is_not_a_crm_message_for_the_outbox() -> None:
    """The outbox matches provider copies by Message-ID: a missing parent must not look synced."""
    state = apply([*office(),
                   msg("mb-ann", "r1", CUSTOMER, [ANN], in_reply_to="<gone@x>")])
    assert ("mb-ann", "<gone@x>") not in state.rfc_index


# -- E3: the same threads whatever the batch boundaries, and on rebuild ---------------------------
RAW = [  # (provider id, Message-ID, In-Reply-To, References)
    ("r1", "<r1@x>", "<gone@x>", "<root@x> <gone@x>"),
    ("r2", "<r2@x>", "<r1@x>", "<root@x> <gone@x> <r1@x>"),
    ("s1", "<s1@x>", "<gone2@x>", "<root@x> <gone2@x>"),
    ("u1", "<u1@x>", None, None),
    ("g", "<gone@x>", "<root@x>", "<root@x>"),
    ("u2", "<u2@x>", "<u1@x>", "<u1@x>"),
    ("l1", "<l1@x>", "<l2@x>", "<l2@x>"),
    ("l2", "<l2@x>", "<l1@x>", "<l1@x>"),
]


def _sync_commands() -> list[Any]:
    out = []
    for n, (pid, mid, irt, refs) in enumerate(RAW):
        head = f"From: c@customer.test\r\nTo: {ANN}\r\nSubject: same subject\r\n" \
               f"Date: Mon, 5 Jan 2026 09:{n:02d}:00 +0000\r\nMessage-ID: {mid}\r\n"
        head += f"In-Reply-To: {irt}\r\n" if irt else ""
        head += f"References: {refs}\r\n" if refs else ""
        message = parse_message((head + "\r\nbody\r\n").encode(), pid)
        out.append(parse_command({"cmd": "SyncMessage", "tenant": TENANT, "mailbox": "mb-ann",
                                  "message": message.model_dump(mode="json", by_alias=True),
                                  "at": (T0 + timedelta(minutes=n + 10)).isoformat()}))
    return out


def _engine_threads(batch: int) -> tuple[dict[str, str], dict[str, str]]:
    engine = Engine.open_in_memory()
    try:
        for i, cmd in enumerate(office()):
            engine.execute(parse_command({"tenant": TENANT, "at": T0.isoformat(), **cmd}),
                           now=T0, correlation_id=f"setup-{i}")
        commands = _sync_commands()
        for start in range(0, len(commands), batch):
            engine.execute_batch(commands[start:start + batch], now=T0 + timedelta(days=1),
                                 correlation_id="b")  # E6: `at` not ahead of the clock
        live = engine.state(TENANT)
        got = {pid: live.messages[("mb-ann", pid)].thread for pid, *_ in RAW}
        folded = TenantState(TENANT)  # a rebuild: fold the stored events afresh
        for seq, event in engine.events(TENANT, after=0):
            evolve(folded, event, seq)
        rebuilt = {pid: folded.messages[("mb-ann", pid)].thread for pid, *_ in RAW}
        return got, rebuilt
    finally:
        engine.close()


def test_e3_s13_missing_parent_threads_are_the_same_for_any_batching_and_rebuild() -> None:
    results = [_engine_threads(batch) for batch in (1, 2, 3, len(RAW))]
    first, rebuilt = results[0]
    assert first == rebuilt
    assert all(got == first and again == first for got, again in results)
    # and they are the right ones: r1, r2, s1 and g share the missing root; u1/u2; the loop
    groups = {frozenset(p for p in first if first[p] == t) for t in first.values()}
    assert groups == {frozenset({"r1", "r2", "s1", "g"}), frozenset({"u1", "u2"}),
                      frozenset({"l1", "l2"})}
