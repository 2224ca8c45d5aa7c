"""Push channel bookkeeping (issue #4): a mailbox's Graph subscription / Gmail watch recorded as
events, so lifecycle notifications find their mailbox and an auditor sees when push was
(re)created; none for mailboxes that do not sync (L1, S10, L4)."""

from __future__ import annotations

from typing import Any

import orjson
from rulekit import apply, at, kinds, mailbox, rejection, run, user

from domain.state import TenantState
from runners.services.engine import Engine


def office() -> TenantState:
    return apply([user("ann", "admin"), user("bob"), mailbox("mb-bob", "bob")])


def push(action: str, reason: str, sub: str | None = "sub-1", expires: int = 3 * 24 * 60,
         **extra: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {"cmd": "RecordPushSubscription", "mailbox": "mb-bob",
                           "action": action, "reason": reason, "subscription_id": sub}
    if action != "ended":
        cmd["expires_at"] = at(expires)
    if action == "created":
        cmd["resource"] = "/users/bob@acme.test/messages"
    return {**cmd, **extra}


def test_push_created_renewed_and_removed_are_recorded_on_the_mailbox() -> None:
    state = office()
    created = run(state, push("created", "missing"))
    assert kinds(created) == ["PushSubscriptionCreated"]
    current = state.mailboxes["mb-bob"].push
    assert current is not None and current.subscription_id == "sub-1"
    assert current.address == "bob@acme.test" and current.renewed_at is None
    assert run(state, push("created", "missing")) == []  # recorded already: nothing new
    renewed = run(state, push("renewed", "expiring", expires=5 * 24 * 60))
    assert kinds(renewed) == ["PushSubscriptionRenewed"]
    current = state.mailboxes["mb-bob"].push
    assert current is not None and current.expires_at == renewed[0].expires_at  # type: ignore[attr-defined]
    assert current.issued_at == renewed[0].occurred_at
    assert run(state, push("ended", "removed_by_provider", sub="other")) == []  # not current
    assert kinds(run(state, push("ended", "removed_by_provider"))) == ["PushSubscriptionEnded"]
    assert state.mailboxes["mb-bob"].push is None


def test_a_new_subscription_names_the_one_it_replaces() -> None:
    state = office()
    run(state, push("created", "missing"))
    (event,) = run(state, push("created", "subscription_removed", sub="sub-2"))
    assert event.replaces == "sub-1"  # type: ignore[attr-defined]
    assert event.reason == "subscription_removed"  # type: ignore[attr-defined]


def test_renewal_must_name_the_current_subscription() -> None:
    state = office()
    assert rejection(state, push("renewed", "expiring")).field == "subscription_id"
    run(state, push("created", "missing"))
    assert rejection(state, push("renewed", "reauthorization_required",
                                 sub="stale")).field == "subscription_id"
    no_expiry = push("renewed", "expiring")
    del no_expiry["expires_at"]
    assert rejection(state, no_expiry).field == "expires_at"
    assert rejection(state, push("created", "missing", expires_at="2026-01-09T00:00:00")
                     ).field == "expires_at"  # no offset
    assert rejection(state, push("created", "whatever")).field == "reason"


def test_l1_no_push_subscription_for_a_deactivated_user_or_a_disconnected_mailbox() -> None:
    state = office()
    run(state, push("created", "missing"))
    run(state, {"cmd": "DeactivateUser", "user": "bob"})
    refused = rejection(state, push("renewed", "expiring", expires=9000))
    assert refused.field == "mailbox" and "user_deactivated" in refused.reason
    # the provider removing it is recorded whatever the mailbox's state
    assert kinds(run(state, push("ended", "removed_by_provider"))) == ["PushSubscriptionEnded"]
    run(state, {"cmd": "ReactivateUser", "user": "bob"})
    run(state, {"cmd": "DisconnectMailbox", "mailbox": "mb-bob"})
    assert "mailbox_disconnected" in rejection(state, push("created", "missing")).reason


def test_push_subscription_is_service_input_and_shows_in_sync_status() -> None:
    engine = Engine.open_in_memory()
    lines = [{"cmd": "AddUser", "user": "bob", "email": "bob@acme.test", "role": "member"},
             {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "bob", "provider": "outlook",
              "address": "bob@acme.test"},
             {"cmd": "RecordPushSubscription", "mailbox": "mb", "action": "created",
              "reason": "missing", "subscription_id": "s-1", "resource": "/users/b/messages",
              "expires_at": "2026-03-05T00:00:00Z"}]
    report = engine.apply_lines([orjson.dumps({"tenant": "t", "at": f"2026-03-0{i + 1}T00:00:00Z",
                                               **c}) for i, c in enumerate(lines)])
    assert report.applied == 3
    status = engine.query_status("t", "bob", "mb")[0]
    assert status["push"] == {"subscription_id": "s-1", "resource": "/users/b/messages",
                              "expires_at": "2026-03-05T00:00:00+00:00",
                              "created_at": "2026-03-03T00:00:00+00:00", "renewed_at": None}
    from domain.permissions import RULES

    assert RULES["RecordPushSubscription"] == "service"
