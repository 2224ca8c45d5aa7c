"""domain.permissions: who may issue which command over the HTTP API (issue #3), pure."""

from __future__ import annotations

from typing import Any

import pytest
from office import OFFICE_USERS
from unit.rulekit import apply

from domain.commands import COMMANDS, parse_command
from domain.errors import Rejection
from domain.permissions import RULES, actor_of, authorise
from domain.state import TenantState

SETUP = [
    *OFFICE_USERS,
    {"cmd": "AddUser", "user": "old", "email": "old@acme.test", "role": "admin"},
    {"cmd": "DeactivateUser", "user": "old"},
    {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "CreateLead", "record": "lead-1", "owner": "mia", "name": "Olga",
     "emails": ["olga@x.test"]},
    {"cmd": "AddCollaborator", "record": "lead-1", "user": "ivy"},
    {"cmd": "CreateLead", "record": "lead-2", "owner": "max", "name": "Two", "emails": []},
    {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "m1", "thread_id": "t1", "from": "olga@x.test", "to": ["mia@acme.test"],
        "subject": "Hello", "sent_at": "2026-01-01T10:00:00Z"}},
]


@pytest.fixture(scope="module")
def state() -> TenantState:
    return apply(SETUP)


def check(state: TenantState, user: str, cmd: dict[str, Any], service: bool = False
          ) -> tuple[str, str] | None:
    """None when allowed, else (field, reason)."""
    try:
        authorise(state, parse_command({"tenant": "acme", **cmd}), user=user, service=service)
    except Rejection as rejection:
        return rejection.field, rejection.reason
    return None


def test_every_command_has_a_rule() -> None:
    assert set(RULES) == set(COMMANDS)
    assert set(RULES.values()) == {"admin", "service", "self", "mailbox", "create", "access",
                                   "manage", "self_or_admin"}


def test_actor_of_users_and_services() -> None:
    assert actor_of("mia", False) == "mia"
    assert actor_of("mailsync", True) == "system:mailsync"


def test_service_tokens_may_issue_anything_in_their_tenant(state: TenantState) -> None:
    for cmd in ({"cmd": "AddUser", "user": "z", "email": "z@acme.test", "role": "admin"},
                {"cmd": "DeleteMessageAtProvider", "mailbox": "mb", "id": "m1"},
                {"cmd": "ShareAddress", "user": "mia", "record": "lead-1",
                 "address": "olga@x.test"}):
        assert check(state, "mailsync", cmd, service=True) is None


def test_a_foreign_tenant_is_refused_even_for_services(state: TenantState) -> None:
    cmd = parse_command({"tenant": "other", "cmd": "DeactivateUser", "user": "oz"})
    with pytest.raises(Rejection) as info:
        authorise(state, cmd, user="svc", service=True)
    assert info.value.field == "tenant"


@pytest.mark.parametrize("user", ["ghost", "old"])
def test_unknown_or_inactive_users_may_issue_nothing(state: TenantState, user: str) -> None:
    result = check(state, user, {"cmd": "SetGlobalVisibility", "user": user,
                                 "record_type": "lead", "level": "visible"})
    assert result is not None and result[0] == "actor"


@pytest.mark.parametrize("cmd", [
    {"cmd": "AddUser", "user": "z", "email": "z@acme.test", "role": "admin"},
    {"cmd": "ChangeUserManager", "user": "mia", "manager": None},
    {"cmd": "DeactivateUser", "user": "ivy"},
    {"cmd": "ConfigureTenant", "sending_domain": "mail.acme.test"},
    {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb", "apply": True},
])
def test_admins_manage_users_tenant_and_operator_decisions(state: TenantState,
                                                           cmd: dict[str, Any]) -> None:
    assert check(state, "ada", cmd) is None
    for user in ("max", "mia"):
        assert check(state, user, cmd) == ("cmd", "only an admin may issue this command")


@pytest.mark.parametrize("cmd", [
    {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "m2", "from": "a@x.test", "to": ["mia@acme.test"], "subject": "s",
        "sent_at": "2026-01-01T10:00:00Z"}},
    {"cmd": "UpdateMessage", "mailbox": "mb", "id": "m1", "read": True},
    {"cmd": "DeleteMessageAtProvider", "mailbox": "mb", "id": "m1"},
    {"cmd": "ReportMailboxGone", "mailbox": "mb"},
])
def test_provider_side_input_needs_a_service_token(state: TenantState,
                                                   cmd: dict[str, Any]) -> None:
    for user in ("ada", "mia"):
        assert check(state, user, cmd) == ("cmd", "provider-side input needs a service token")


def test_users_act_only_on_their_own_mail(state: TenantState) -> None:
    share = {"cmd": "ShareAddress", "record": "lead-1", "address": "olga@x.test"}
    assert check(state, "mia", {**share, "user": "mia"}) is None
    assert check(state, "ada", {**share, "user": "mia"})[0] == "user"
    mark = {"cmd": "MarkThreadPrivate", "threads": ["mb:t1"]}
    assert check(state, "mia", {**mark, "user": "mia"}) is None
    assert check(state, "ivy", {**mark, "user": "ivy"}) == ("threads.0", "not found")
    assert check(state, "mia", {**mark, "user": "mia", "threads": ["mb:nope"]}) == (
        "threads.0", "not found")


def test_sending_only_as_yourself_from_your_own_mailbox(state: TenantState) -> None:
    send = {"cmd": "SendEmail", "mailbox": "mb", "kind": "single", "to": ["o@x.test"],
            "subject": "s", "body": "b"}
    assert check(state, "mia", {**send, "user": "mia"}) is None
    assert check(state, "max", {**send, "user": "mia"})[0] == "user"
    assert check(state, "max", {**send, "user": "max"}) == ("mailbox", "not found")


def test_mailboxes_are_their_owners_or_an_admins(state: TenantState) -> None:
    assert check(state, "mia", {"cmd": "DisconnectMailbox", "mailbox": "mb"}) is None
    assert check(state, "ada", {"cmd": "DisconnectMailbox", "mailbox": "mb"}) is None
    assert check(state, "max", {"cmd": "DisconnectMailbox", "mailbox": "mb"}) == (
        "mailbox", "not found")
    connect = {"cmd": "ConnectMailbox", "mailbox": "mb2", "provider": "gmail",
               "address": "ivy@acme.test"}
    assert check(state, "ivy", {**connect, "user": "ivy"}) is None
    assert check(state, "ivy", {**connect, "user": "mia"})[0] == "user"
    assert check(state, "ada", {**connect, "user": "mia"}) is None


def test_owner_and_collaborators_change_only_what_they_may(state: TenantState) -> None:
    change = {"cmd": "ChangeOwner", "record": "lead-1", "owner": "ivy"}
    assert check(state, "mia", change) is None  # owner
    assert check(state, "max", change) is None  # manager above the owner
    assert check(state, "ada", change) is None  # admin
    assert check(state, "ivy", change)[0] == "record"  # collaborator
    assert check(state, "mia", {**change, "record": "lead-2"}) == ("record", "not found")
    # collaborators may edit what they can access
    assert check(state, "ivy", {"cmd": "UpdateContact", "record": "lead-1",
                                "fields": {"name": "O"}}) is None
    assert check(state, "mia", {"cmd": "UpdateContact", "record": "lead-2",
                                "fields": {"name": "O"}}) == ("record", "not found")


def test_creating_records_for_yourself_or_those_you_manage(state: TenantState) -> None:
    lead = {"cmd": "CreateLead", "record": "lead-9", "name": "N", "emails": []}
    assert check(state, "mia", {**lead, "owner": "mia"}) is None
    assert check(state, "max", {**lead, "owner": "mia"}) is None
    assert check(state, "mia", {**lead, "owner": "max"})[0] == "owner"
    assert check(state, "ada", {**lead, "owner": "ivy"}) is None
    deal = {"cmd": "CreateDeal", "record": "deal-9", "owner": "ivy", "name": "D",
            "stage": "open"}
    assert check(state, "ivy", {**deal, "contacts": ["lead-2"]}) == ("contacts.0", "not found")
