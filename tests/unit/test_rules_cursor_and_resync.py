"""Provider cursors and resyncs recorded as events (issue #4 groundwork for L1, L3, L4, S2, S10)."""

from __future__ import annotations

from datetime import timedelta

from rulekit import T0, apply, kinds, mailbox, rejection, run, user

from domain.state import TenantState


def office() -> TenantState:
    return apply([user("ann", "admin"), user("bob"), mailbox("mb-bob", "bob")])


def cursor(value: str, delivery: str = "d1") -> dict[str, object]:
    return {"cmd": "AdvanceMailboxCursor", "mailbox": "mb-bob", "cursor": value,
            "delivery_id": delivery}


def test_cursor_advances_for_an_active_user_and_is_idempotent() -> None:
    state = office()
    assert kinds(run(state, cursor("h-100"))) == ["MailboxCursorAdvanced"]
    assert state.mailboxes["mb-bob"].cursor == "h-100"
    assert run(state, cursor("h-100", "d2")) == []  # the same cursor again changes nothing
    assert kinds(run(state, cursor("h-120", "d3"))) == ["MailboxCursorAdvanced"]
    assert state.mailboxes["mb-bob"].cursor == "h-120"


def test_l1_delivery_for_deactivated_user_is_skipped_and_cursor_stays() -> None:
    state = office()
    run(state, cursor("h-100"))
    run(state, {"cmd": "DeactivateUser", "user": "bob"})
    events = run(state, cursor("h-150", "d9"))
    assert kinds(events) == ["DeliverySkipped"]
    assert events[0].reason == "user_deactivated"  # type: ignore[attr-defined]
    assert events[0].delivery_id == "d9"  # type: ignore[attr-defined]
    assert state.mailboxes["mb-bob"].cursor == "h-100"
    assert state.mailboxes["mb-bob"].skipped == 1


def test_s10_and_l4_deliveries_for_disconnected_or_gone_mailboxes_are_skipped() -> None:
    state = office()
    run(state, {"cmd": "DisconnectMailbox", "mailbox": "mb-bob"})
    assert run(state, cursor("h-1"))[0].reason == "mailbox_disconnected"  # type: ignore[attr-defined]
    run(state, {"cmd": "ReconnectMailbox", "mailbox": "mb-bob"})
    run(state, {"cmd": "ReportMailboxGone", "mailbox": "mb-bob"})
    assert run(state, cursor("h-2"))[0].reason == "mailbox_gone"  # type: ignore[attr-defined]
    assert state.mailboxes["mb-bob"].cursor is None


def test_l3_resync_after_reactivation_covers_the_backfill_window() -> None:
    state = apply([user("ann", "admin"), user("bob"),
                   mailbox("mb-bob", "bob", backfill_days=10)])
    run(state, {"cmd": "DeactivateUser", "user": "bob"})
    refused = rejection(state, {"cmd": "ResyncMailbox", "mailbox": "mb-bob",
                                "reason": "reactivated"})
    assert refused.field == "mailbox"
    assert "user_deactivated" in refused.reason
    run(state, {"cmd": "ReactivateUser", "user": "bob"})
    events = run(state, {"cmd": "ResyncMailbox", "mailbox": "mb-bob", "reason": "reactivated"})
    assert kinds(events) == ["MailboxResyncStarted"]
    started = events[0]
    assert started.since == started.occurred_at - timedelta(days=10)  # type: ignore[attr-defined]
    assert state.mailboxes["mb-bob"].resync_reason == "reactivated"
    assert started.occurred_at > T0


def test_l4_a_gone_mailbox_is_not_resynced_and_keeps_its_history() -> None:
    state = office()
    run(state, {"cmd": "SyncMessage", "mailbox": "mb-bob", "message": {
        "id": "m1", "from": "x@ext.test", "to": ["bob@acme.test"], "subject": "s",
        "sent_at": "2026-01-05T08:00:00Z"}})
    run(state, {"cmd": "ReportMailboxGone", "mailbox": "mb-bob"})
    refused = rejection(state, {"cmd": "ResyncMailbox", "mailbox": "mb-bob",
                                "reason": "cursor_expired"})
    assert "mailbox_gone" in refused.reason
    assert not state.messages[("mb-bob", "m1")].deleted


def test_unknown_mailbox_and_bad_reason_are_rejected_with_the_field() -> None:
    state = office()
    assert rejection(state, {"cmd": "AdvanceMailboxCursor", "mailbox": "nope",
                             "cursor": "x"}).field == "mailbox"
    assert rejection(state, {"cmd": "ResyncMailbox", "mailbox": "mb-bob",
                             "reason": "because"}).field == "reason"
    assert rejection(state, {"cmd": "AdvanceMailboxCursor", "mailbox": "mb-bob",
                             "cursor": ""}).field == "cursor"


def test_sync_status_shows_the_cursor_its_time_and_the_last_resync() -> None:
    import orjson

    from runners.services.engine import Engine

    engine = Engine.open_in_memory()
    lines = [{"cmd": "AddUser", "user": "bob", "email": "bob@acme.test", "role": "member"},
             {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "bob", "provider": "imap",
              "address": "bob@acme.test"},
             {"cmd": "ResyncMailbox", "mailbox": "mb", "reason": "first_sync"},
             {"cmd": "AdvanceMailboxCursor", "mailbox": "mb", "cursor": "7/42/9"}]
    report = engine.apply_lines([orjson.dumps({"tenant": "t", "at": f"2026-03-0{i + 1}T00:00:00Z",
                                               **c}) for i, c in enumerate(lines)])
    assert report.applied == 4
    status = engine.query_status("t", "bob", "mb")[0]
    assert status["cursor"] == "7/42/9"
    assert status["cursor_at"] == "2026-03-04T00:00:00+00:00"
    assert status["resync_reason"] == "first_sync"
    assert status["resync_since"] == "2026-02-01T00:00:00+00:00"
