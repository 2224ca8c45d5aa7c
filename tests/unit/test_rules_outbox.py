"""Outbox rules (S7, S12, S14): CRM-side changes become outbound requests, the worker's
acknowledgements settle them, and the provider's copy of CRM-sent mail is the same message."""

from __future__ import annotations

from typing import Any

from rulekit import CUSTOMER, apply, kinds, msg, office, rejection, run

from domain.commands import parse_command
from domain.errors import Rejection
from domain.permissions import authorise
from domain.state import TenantState
from projections.rows import event_rows, thread_rows


def send(**extra: Any) -> dict[str, Any]:
    return {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
            "to": [CUSTOMER], "subject": "Offer", "body": "Hello", **extra}


def ack(request: str, **extra: Any) -> dict[str, Any]:
    return {"cmd": "AcknowledgeOutboundMail", "mailbox": "mb-ann", "request": request, **extra}


def sent_state() -> TenantState:
    state = apply(office())
    run(state, send())
    return state


def crm_id(state: TenantState) -> str:
    return next(mid for (mbx, mid) in state.sent_provider_ids if mbx == "mb-ann")


def test_s7_send_email_is_a_pending_outbound_request() -> None:
    state = sent_state()
    mid = crm_id(state)
    assert state.outbound[mid].operation == "send"
    assert state.messages[("mb-ann", mid)].delivery_status == "queued"


def test_s7_ack_marks_message_sent_with_the_provider_id() -> None:
    state = sent_state()
    mid = crm_id(state)
    events = run(state, ack(mid, provider_id="g-17", provider_thread_id="gt-9", attempts=2))
    assert kinds(events) == ["OutboundMailAcknowledged"]
    assert state.messages[("mb-ann", mid)].delivery_status == "sent"
    assert state.sent_provider_ids[("mb-ann", mid)] == "g-17"
    assert mid not in state.outbound
    rows = thread_rows(state, state.messages[("mb-ann", mid)].thread, {})
    assert rows["t"]["messages"][0]["delivery_status"] == "sent"


def test_s7_failed_ack_marks_message_failed_and_needs_a_reason() -> None:
    state = sent_state()
    mid = crm_id(state)
    assert rejection(state, ack(mid, ok=False)).field == "error"
    run(state, ack(mid, ok=False, error="550 mailbox unavailable", attempts=5))
    assert state.messages[("mb-ann", mid)].delivery_status == "failed"
    assert state.mailboxes["mb-ann"].last_error == "outbox: 550 mailbox unavailable"


def test_s7_ack_of_an_unknown_or_settled_request_is_rejected() -> None:
    state = sent_state()
    mid = crm_id(state)
    assert rejection(state, ack("crm-999")).field == "request"
    run(state, ack(mid, provider_id="g-1"))
    assert rejection(state, ack(mid, provider_id="g-1")).field == "request"


def test_s7_ack_with_command_id_twice_is_unchanged() -> None:
    state = sent_state()
    mid = crm_id(state)
    run(state, ack(mid, provider_id="g-1", command_id=f"outbox:{mid}"))
    again = run(state, ack(mid, provider_id="g-1", command_id=f"outbox:{mid}"))
    assert again == []


def test_s14_provider_copy_with_acked_provider_id_is_not_a_second_copy() -> None:
    state = sent_state()
    mid = crm_id(state)
    run(state, ack(mid, provider_id="g-17", provider_thread_id="gt-9"))
    before = len(state.messages)
    events = run(state, msg("mb-ann", "g-17", "ann@acme.test", [CUSTOMER], thread_id="gt-9"))
    assert events == [] and len(state.messages) == before


def test_s14_provider_copy_matched_by_message_id_before_the_ack() -> None:
    state = sent_state()
    mid = crm_id(state)
    rfc = state.messages[("mb-ann", mid)].rfc_id
    events = run(state, msg("mb-ann", "g-17", "ann@acme.test", [CUSTOMER], thread_id="gt-9",
                            message_id=rfc, labels=["SENT"], read=True))
    assert kinds(events) == ["OutboundCopyMatched"]
    assert ("mb-ann", "g-17") not in state.messages
    assert state.messages[("mb-ann", mid)].delivery_status == "sent"
    assert state.messages[("mb-ann", mid)].labels == ("SENT",)
    assert state.local_ids[("mb-ann", "g-17")] == mid
    # the provider later reports changes under its own id: they apply to the crm message
    run(state, {"cmd": "UpdateMessage", "mailbox": "mb-ann", "id": "g-17", "read": False})
    assert state.messages[("mb-ann", mid)].read is False


def test_s7_reply_under_the_sent_messages_provider_thread_joins_the_crm_thread() -> None:
    state = sent_state()
    mid = crm_id(state)
    crm_thread = state.messages[("mb-ann", mid)].thread
    run(state, ack(mid, provider_id="g-17", provider_thread_id="gt-9"))
    run(state, msg("mb-ann", "g-18", CUSTOMER, ["ann@acme.test"], thread_id="gt-9"))
    assert state.messages[("mb-ann", "g-18")].thread == crm_thread


def test_s12_delete_message_removes_crm_copy_and_queues_request() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1")])
    events = run(state, {"cmd": "DeleteMessage", "user": "ann", "mailbox": "mb-ann", "id": "m1"})
    assert kinds(events) == ["MessageDeletionRequested"]
    request = events[0].request  # type: ignore[attr-defined]
    assert state.outbound[request].operation == "delete"
    assert state.messages[("mb-ann", "m1")].deleted
    assert not state.mailboxes["mb-ann"].suspect  # not the L5 guard: the owner asked for it
    assert event_rows(state, events[0]) == {"mb-ann:t1\x1fm1": {}}
    # the provider then reports the deletion: nothing more happens
    assert run(state, {"cmd": "DeleteMessageAtProvider", "mailbox": "mb-ann", "id": "m1"}) == []
    assert run(state, {"cmd": "UpdateMessage", "mailbox": "mb-ann", "id": "m1",
                       "read": True}) == []
    # deleting again changes nothing
    assert run(state, {"cmd": "DeleteMessage", "user": "ann", "mailbox": "mb-ann",
                       "id": "m1"}) == []


def test_s12_mark_read_applies_at_once_and_queues_request() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1")])
    events = run(state, {"cmd": "MarkMessageRead", "user": "ann", "mailbox": "mb-ann",
                         "id": "m1", "read": True})
    assert kinds(events) == ["MessageReadRequested"]
    assert state.messages[("mb-ann", "m1")].read is True
    request = events[0].request  # type: ignore[attr-defined]
    assert state.outbound[request].read is True
    assert run(state, {"cmd": "MarkMessageRead", "user": "ann", "mailbox": "mb-ann",
                       "id": "m1", "read": True}) == []
    run(state, ack(request))
    assert request not in state.outbound


def test_s12_only_the_mailbox_owner_changes_its_messages() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, ["ann@acme.test"], thread_id="t1")])
    cmd = {"cmd": "DeleteMessage", "user": "bob", "mailbox": "mb-ann", "id": "m1"}
    assert rejection(state, cmd).field == "mailbox"
    assert rejection(state, {**cmd, "user": "ann", "id": "nope"}).field == "id"
    for caller in ("bob", "boss"):  # admins included: nobody acts on another user's mail
        parsed = parse_command({"tenant": "acme", **cmd, "user": caller})
        try:
            authorise(state, parsed, user=caller, service=False)
        except Rejection as exc:
            assert exc.field == "mailbox"
        else:
            raise AssertionError(f"{caller} may not delete ann's mail")


def test_s12_ack_is_service_only() -> None:
    state = sent_state()
    parsed = parse_command({"tenant": "acme", **ack(crm_id(state))})
    try:
        authorise(state, parsed, user="ann", service=False)
    except Rejection as exc:
        assert exc.field == "cmd"
    else:
        raise AssertionError("a user may not acknowledge outbound mail")
