"""Who may issue which command (issue #3): a pure rule table over the tenant's state.

A service token (the sync engine, provisioning) may issue any command of its tenant. A user token
may issue only what that user may do in the CRM:

- `admin`      — only admins: users, tenant configuration, operator decisions on mailboxes.
- `service`    — provider-side input (what a mailbox or address book reports): service tokens only.
- `self`       — the command's `user` field must be the caller: their own mail, settings, shares
                 and links (admins included: nobody acts on another user's mail).
- `mailbox`    — the caller's own mailbox (the `user` field or the mailbox's user), or an admin.
- `access`     — any record named must be one the caller may access (access(R)).
- `manage`     — the caller owns every record named, is a manager above its owner, or is admin.
- `create`     — a new record owned by the caller, by someone the caller manages, or by anyone
                 when the caller is an admin.
- `self_or_admin` — the command's `user` field is the caller, or the caller is an admin.

Only admins and service tokens may date a command (`at`, E6): a member's `at` is refused naming
`at`, whatever the command (domain time is the tenant's, and one command dated ahead would date
every later one).

Ids the caller may not see are refused with the same reason as unknown ids ("not found"), so a
command cannot be used to probe for records, threads or mailboxes (V12, §8). An id the caller
would create (CreateLead/Contact/Deal `record`, ConnectMailbox `mailbox`) that is taken by
something the caller may not see is refused as NOT_AVAILABLE, not "already exists": the caller
learns that the id cannot be used, not what holds it. Commands from a user who is not an active
user of the tenant are refused altogether.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.commands import Command
from domain.errors import Rejection
from domain.state import TenantState
from domain.visibility import access, manager_chain

RULES: dict[str, str] = {
    "AddUser": "admin", "ChangeUserManager": "admin", "DeactivateUser": "admin",
    "ReactivateUser": "admin", "DeleteUser": "admin", "ConfigureTenant": "admin",
    "ConfirmMailboxDeletions": "admin",
    "SyncMessage": "service", "UpdateMessage": "service", "DeleteMessageAtProvider": "service",
    "ReportMailboxGone": "service", "SyncExternalContact": "service",
    "AdvanceMailboxCursor": "service", "ResyncMailbox": "service",
    "AcknowledgeExternalContactChange": "service", "AcknowledgeOutboundMail": "service",
    "DeleteMessage": "self", "MarkMessageRead": "self",
    "DeleteMessagesAtProvider": "service", "RecordDeadLetter": "service",
    "RecordDeadLetterReplay": "admin", "RecordPushSubscription": "service",
    "DeleteExternalContact": "service", "RenameExternalCategory": "service",
    "ConnectMailbox": "mailbox", "ChangeMailboxAddress": "mailbox",
    "ChangeMailboxScope": "mailbox",
    "DisconnectMailbox": "mailbox", "ReconnectMailbox": "mailbox",
    "SendEmail": "self", "LinkThread": "self", "UnlinkThread": "self",
    "SetGlobalVisibility": "self", "ShareAddress": "self", "UnshareAddress": "self",
    "MarkThreadShared": "self", "MarkThreadPrivate": "self", "ConnectContactSync": "self",
    "CreateLead": "create", "CreateContact": "create", "CreateDeal": "create",
    "UpdateContact": "access", "ChangeDealStage": "access", "LinkDealContact": "access",
    "UnlinkDealContact": "access",
    "ChangeOwner": "manage", "AddCollaborator": "manage", "RemoveCollaborator": "manage",
    "MergeContacts": "manage", "UnmergeContact": "manage",
    "RevokeTokens": "self_or_admin",
}

NOT_FOUND = "not found"
NOT_AVAILABLE = "id not available; choose another"


def actor_of(user: str, service: bool) -> str:
    """The actor recorded for a caller (E2): the user id, or `system:<service>`."""
    return f"system:{user}" if service else user


def _records_named(cmd: Command) -> list[tuple[str, str]]:
    """(field, record id) of every record a command names (not the one it creates)."""
    out: list[tuple[str, str]] = []
    fields = ("deal", "contact", "survivor") if cmd.cmd.startswith("Create") else (
        "record", "deal", "contact", "survivor")
    for name in fields:
        value = getattr(cmd, name, None)
        if isinstance(value, str):
            out.append((name, value))
    for name in ("merged", "contacts"):
        values: Any = getattr(cmd, name, None)
        if isinstance(values, list):
            out += [(f"{name}.{i}", r) for i, r in enumerate(values) if isinstance(r, str)]
    return out


def _threads_named(cmd: Command) -> list[tuple[str, str]]:
    thread: Any = getattr(cmd, "thread", None)
    threads: Any = getattr(cmd, "threads", None)
    out = [("thread", thread)] if isinstance(thread, str) else []
    if isinstance(threads, list):
        out += [(f"threads.{i}", t) for i, t in enumerate(threads) if isinstance(t, str)]
    return out


def _manages(state: TenantState, user: str, owner: str) -> bool:
    return user == owner or user in manager_chain(state, owner)


def authorise(state: TenantState, cmd: Command, *, user: str, service: bool) -> None:
    """Raise Rejection(cmd, field, reason) unless the caller may issue `cmd` on `state`: the
    caller first (tenant, active, `at`), then the command's rule, then every id it names."""
    if cmd.tenant != state.tenant:
        raise Rejection(cmd.cmd, "tenant", "not the tenant of your token")
    if service:
        return
    admin = _active_caller(state, cmd, user)
    rule = RULES.get(cmd.cmd, "admin")
    if rule == "service":
        raise Rejection(cmd.cmd, "cmd", "provider-side input needs a service token")
    if rule == "admin":
        if not admin:
            raise Rejection(cmd.cmd, "cmd", "only an admin may issue this command")
        return
    _RULE_CHECKS[rule](state, cmd, user, admin)
    _check_ids_named(state, cmd, rule, user, admin)


def _active_caller(state: TenantState, cmd: Command, user: str) -> bool:
    """Whether the caller, an active user of the tenant (else Rejection), is an admin; only
    admins may date a command (E6)."""
    me = state.users.get(user)
    if me is None or not me.active:
        raise Rejection(cmd.cmd, "actor", f"{user!r} is not an active user of this tenant")
    admin = me.role == "admin"
    if cmd.at is not None and not admin:
        raise Rejection(cmd.cmd, "at", "only admins and service tokens may set a command's time")
    return admin


def _check_self(state: TenantState, cmd: Command, user: str, admin: bool) -> None:
    if getattr(cmd, "user", None) != user:
        raise Rejection(cmd.cmd, "user", "must be you: you may act only on your own mail")


def _check_self_or_admin(state: TenantState, cmd: Command, user: str, admin: bool) -> None:
    if getattr(cmd, "user", None) != user and not admin:
        raise Rejection(cmd.cmd, "user", "must be you, unless you are an admin")


def _check_create(state: TenantState, cmd: Command, user: str, admin: bool) -> None:
    owner = getattr(cmd, "owner", user)
    if not admin and not _manages(state, user, owner):
        raise Rejection(cmd.cmd, "owner", "must be you or a user you manage")
    taken = state.records.get(getattr(cmd, "record", ""))
    if taken is not None and user not in access(state, taken):
        raise Rejection(cmd.cmd, "record", NOT_AVAILABLE)


def _check_on_records(state: TenantState, cmd: Command, user: str, admin: bool) -> None:
    """`access` and `manage`: decided on each record named (`_check_ids_named`)."""


def _check_ids_named(state: TenantState, cmd: Command, rule: str, user: str,
                     admin: bool) -> None:
    """The caller's own mailbox for their mail, and every thread and record named visible to
    them (else NOT_FOUND, V12); `manage`: each record theirs to change."""
    if cmd.cmd in ("SendEmail", "DeleteMessage", "MarkMessageRead"):
        mailbox = state.mailboxes.get(getattr(cmd, "mailbox", ""))
        if mailbox is None or mailbox.user != user:
            raise Rejection(cmd.cmd, "mailbox", NOT_FOUND)
    for field, thread_id in _threads_named(cmd):
        thread = state.threads.get(thread_id)
        if thread is None or state.thread_owner(thread) != user:
            raise Rejection(cmd.cmd, field, NOT_FOUND)
    for field, record_id in _records_named(cmd):
        record = state.records.get(record_id)
        if record is None or user not in access(state, record):
            raise Rejection(cmd.cmd, field, NOT_FOUND)
        if rule == "manage" and not admin and not _manages(state, user, record.owner):
            raise Rejection(cmd.cmd, field, "only its owner, a manager above the owner or an "
                                            "admin may change this record")


def _check_mailbox(state: TenantState, cmd: Command, user: str, admin: bool) -> None:
    if cmd.cmd == "ConnectMailbox":
        if not admin and getattr(cmd, "user", None) != user:
            raise Rejection(cmd.cmd, "user", "must be you: you may connect only your own mailbox")
        taken = state.mailboxes.get(getattr(cmd, "mailbox", ""))
        if taken is not None and not admin and taken.user != user:
            raise Rejection(cmd.cmd, "mailbox", NOT_AVAILABLE)
        return
    mailbox = state.mailboxes.get(getattr(cmd, "mailbox", ""))
    if mailbox is None or (not admin and mailbox.user != user):
        raise Rejection(cmd.cmd, "mailbox", NOT_FOUND)


_RULE_CHECKS: dict[str, Callable[[TenantState, Command, str, bool], None]] = {
    "self": _check_self, "self_or_admin": _check_self_or_admin, "mailbox": _check_mailbox,
    "create": _check_create, "access": _check_on_records, "manage": _check_on_records}
