"""Issue #10, the pure parts: token expiry and refusal (§8), RevokeTokens, command ids per
principal (E5), rejections that say nothing of invisible ids (V12, §8), bounded rejection text
(E8) and the per-principal rate limit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from rulekit import CUSTOMER, apply, at, kinds, lead, office, rejection, run

from adapters.http.limits import RateLimit
from adapters.http.tokens import (
    SERVICE_TTL,
    USER_TTL,
    InvalidToken,
    _b64,
    _sign,
    _unb64,
    issue,
    refusal,
    verify,
)
from domain.commands import parse_command
from domain.errors import Rejection
from domain.permissions import NOT_AVAILABLE, NOT_FOUND, authorise
from domain.state import TenantState
from domain.visibility import access
from runners.bootstrap.settings import load_settings
from runners.entrypoints.serve import rate_limit
from runners.services.apply import REJECTION_TEXT, bounded, bounded_rejection

SECRET = b"unit-secret-0123456789abcdef"
T = 1_800_000_000


def payload(token: str) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(_unb64(token.split(".")[1]))
    return result


# -- tokens -------------------------------------------------------------------------------------
def test_s8_tokens_carry_an_expiry_by_kind() -> None:
    assert payload(issue(SECRET, "acme", "mia", issued_at=T))["exp"] == T + USER_TTL
    assert payload(issue(SECRET, "acme", "sync", True, issued_at=T))["exp"] == T + SERVICE_TTL
    assert payload(issue(SECRET, "acme", "mia", issued_at=T, ttl=60))["exp"] == T + 60
    with pytest.raises(ValueError, match="ttl"):
        issue(SECRET, "acme", "mia", ttl=0)


def test_s8_a_token_is_refused_from_its_expiry_on() -> None:
    token = issue(SECRET, "acme", "mia", issued_at=T, ttl=60)
    assert verify(SECRET, token, now=T + 59).expires_at == T + 60
    with pytest.raises(InvalidToken, match="expired"):
        verify(SECRET, token, now=T + 60)


def test_s8_a_token_without_expiry_is_refused() -> None:
    """Tokens issued before expiries existed would live for ever: refused, issue a new one."""
    signed = "crm1." + _b64(orjson.dumps({"t": "acme", "u": "mia", "s": False, "iat": T}))
    old = f"{signed}.{_b64(_sign(SECRET, signed))}"
    with pytest.raises(InvalidToken, match="without expiry"):
        verify(SECRET, old, now=T + 1)


def test_s8_an_expiry_that_is_not_a_number_is_malformed() -> None:
    signed = "crm1." + _b64(orjson.dumps({"t": "acme", "u": "mia", "s": False, "iat": T,
                                          "exp": True}))
    with pytest.raises(InvalidToken, match="malformed"):
        verify(SECRET, f"{signed}.{_b64(_sign(SECRET, signed))}", now=T + 1)


def office_state() -> TenantState:
    return apply(office())


def test_s8_refusal_follows_the_users_status() -> None:
    state = office_state()
    assert refusal(state, "ann", T) is None
    assert refusal(state, "nobody", T) == "not an active user of this tenant"
    run(state, {"cmd": "DeactivateUser", "user": "ann"})
    assert refusal(state, "ann", T) == "not an active user of this tenant"
    run(state, {"cmd": "ReactivateUser", "user": "ann"})
    assert refusal(state, "ann", T) is None


def test_s8_revoke_tokens_refuses_tokens_issued_up_to_it() -> None:
    state = office_state()
    events = run(state, {"cmd": "RevokeTokens", "user": "ann", "at": at(100)})
    assert kinds(events) == ["TokensRevoked"]
    revoked = int(datetime.fromisoformat(at(100)).timestamp())
    assert refusal(state, "ann", revoked - 3600) == "token revoked"
    assert refusal(state, "ann", revoked) == "token revoked"  # same second: refused too
    assert refusal(state, "ann", revoked + 1) is None  # a token issued afterwards
    assert refusal(state, "bob", revoked - 3600) is None  # only ann's tokens


def test_s8_revoke_tokens_admin_for_anyone_a_user_for_themself() -> None:
    state = office_state()
    admin, member, other = "boss", "ann", "bob"

    def refused(user: str, target: str) -> tuple[str, str] | None:
        cmd = parse_command({"cmd": "RevokeTokens", "tenant": state.tenant, "user": target})
        try:
            authorise(state, cmd, user=user, service=False)
        except Rejection as exc:
            return exc.field, exc.reason
        return None

    assert refused(admin, member) is None
    assert refused(member, member) is None
    assert refused(member, other) == ("user", "must be you, unless you are an admin")
    assert rejection(state, {"cmd": "RevokeTokens", "user": "ghost"}).reason == \
        "unknown user 'ghost'"


# -- E5: a command id belongs to its principal ---------------------------------------------------
def test_e5_another_principals_command_id_does_not_make_the_outbox_ack_a_no_op() -> None:
    state = office_state()
    run(state, {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
                "to": [CUSTOMER], "subject": "Offer", "body": "Hello"})
    mid = next(m for (box, m) in state.sent_provider_ids if box == "mb-ann")
    # ann takes the outbox's key for a command of her own
    taken = run(state, {"cmd": "SetGlobalVisibility", "user": "ann", "record_type": "lead",
                        "level": "visible", "actor": "ann", "command_id": f"outbox:{mid}"})
    assert kinds(taken) == ["GlobalVisibilitySet"]
    ack = {"cmd": "AcknowledgeOutboundMail", "mailbox": "mb-ann", "request": mid,
           "provider_id": "g-1", "actor": "system:outbox", "command_id": f"outbox:{mid}"}
    assert kinds(run(state, ack)) == ["OutboundMailAcknowledged"]
    assert state.messages[("mb-ann", mid)].delivery_status == "sent"
    # the same principal sending its key again is still a no-op (E5 idempotency kept)
    assert run(state, ack) == []


def test_e5_a_user_cannot_take_a_services_actor() -> None:
    refused = rejection(office_state(), {"cmd": "AddUser", "user": "system:outbox",
                                         "email": "o@acme.test", "role": "member"})
    assert (refused.field, refused.reason) == ("user", "ids starting with 'system:' are "
                                                       "reserved for services")


def test_e5_the_same_principals_key_stays_idempotent_across_command_kinds() -> None:
    state = office_state()
    assert run(state, {**lead("lead-9", "ann"), "actor": "ann", "command_id": "k-1"})
    assert run(state, {**lead("lead-10", "ann"), "actor": "ann", "command_id": "k-1"}) == []
    other = run(state, {**lead("lead-10", "ann"), "actor": "bob", "command_id": "k-1"})
    assert other and "lead-10" in state.records


# -- V12 in rejections ---------------------------------------------------------------------------
def test_v12_creating_an_invisible_records_id_does_not_say_it_exists() -> None:
    state = office_state()
    run(state, lead("lead-secret", "ann"))
    outsider = "bob"  # not ann's manager, not an admin, not a collaborator
    assert outsider not in access(state, state.records["lead-secret"])
    cmd = parse_command({**lead("lead-secret", outsider), "tenant": state.tenant})
    with pytest.raises(Rejection) as refused:
        authorise(state, cmd, user=outsider, service=False)
    assert (refused.value.field, refused.value.reason) == ("record", NOT_AVAILABLE)
    assert "exist" not in refused.value.reason and "lead-secret" not in refused.value.reason
    # a named (not created) invisible id is "not found", like an unknown one
    named = parse_command({"cmd": "AddCollaborator", "tenant": state.tenant,
                           "record": "lead-secret", "user": outsider})
    unknown = parse_command({"cmd": "AddCollaborator", "tenant": state.tenant,
                             "record": "lead-nope", "user": outsider})
    reasons = []
    for command in (named, unknown):
        with pytest.raises(Rejection) as exc:
            authorise(state, command, user=outsider, service=False)
        reasons.append((exc.value.field, exc.value.reason))
    assert reasons == [("record", NOT_FOUND)] * 2


def test_v12_connecting_another_users_mailbox_id_does_not_say_it_exists() -> None:
    state = office_state()
    cmd = parse_command({"cmd": "ConnectMailbox", "tenant": state.tenant, "mailbox": "mb-ann",
                         "user": "bob", "provider": "gmail", "address": "bob2@acme.test"})
    with pytest.raises(Rejection) as refused:
        authorise(state, cmd, user="bob", service=False)
    assert (refused.value.field, refused.value.reason) == ("mailbox", NOT_AVAILABLE)


# -- E8: bounded rejections ----------------------------------------------------------------------
def test_e8_rejection_text_is_cut_to_about_a_kibibyte_with_a_marker() -> None:
    huge = "X" * 2_000_000
    cut = bounded_rejection(Rejection(huge, huge, f"unknown record {huge!r}"))
    total = sum(len(t.encode()) for t in (cut.cmd, cut.field, cut.reason))
    assert total <= REJECTION_TEXT
    assert cut.cmd.endswith("…[cut]") and cut.reason.startswith("unknown record 'XXX")
    assert cut.reason.endswith("…[cut]") and len(cut.field.encode()) <= 128
    assert bounded("short", 10) == "short"
    assert len(bounded("é" * 100, 11).encode()) <= 11  # never splits a character


# -- the rate limit ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_is_a_token_bucket_per_principal() -> None:
    clock = Clock()
    limit = RateLimit(rate=10, burst=100, clock=clock)
    mia, ivy = ("acme", "mia", False), ("acme", "ivy", False)
    assert limit.take(mia, 100) == 0  # the burst
    assert limit.take(mia, 1) == pytest.approx(0.1)  # empty: wait for one token
    assert limit.take(ivy, 1) == 0  # another principal has its own bucket
    clock.now = 0.1
    assert limit.take(mia, 500) == 0  # one token: a large batch passes, into debt
    assert limit.take(mia, 1) == pytest.approx(50.0)  # the debt is paid first
    clock.now = 50.1
    assert limit.take(mia, 1) == 0


def test_rate_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_COMMAND_RATE", "0")
    assert rate_limit(load_settings()) is None
    monkeypatch.setenv("CRMSYNC_COMMAND_RATE", "5")
    monkeypatch.setenv("CRMSYNC_COMMAND_BURST", "7")
    found = rate_limit(load_settings())
    assert found is not None and (found.rate, found.burst) == (5, 7)
    monkeypatch.setenv("CRMSYNC_COMMAND_BURST", "many")
    with pytest.raises(ValueError, match="CRMSYNC_COMMAND_BURST"):
        rate_limit(load_settings())


def test_e8_operator_rejections_are_stored_cut_on_the_cli() -> None:
    """The CLI (no gate) keeps its rejections, cut like any other: name, field, actor."""
    from runners.services.engine import Engine

    engine = Engine.open_in_memory()
    engine.apply_lines(['{"tenant": "acme", "cmd": "AddUser", "user": "ada", '
                        '"email": "ada@acme.test", "role": "admin"}'])
    junk = orjson.dumps({"tenant": "acme", "cmd": "Q" * 1_000_000, "actor": "A" * 1_000_000})
    report = engine.apply_lines([junk])
    assert len(report.rejected) == 1
    log = engine.read_log(0, 10)
    assert len(log) == 2
    stored = log[1].event
    text = stored.model_dump_json().encode()
    assert len(text) < REJECTION_TEXT + 600
    assert stored.actor.endswith("…[cut]") and len(stored.actor.encode()) <= 128
