"""decide(state, command) -> events: the whole command side as one pure function.

A command either yields its events (possibly none: an idempotent no-op) or raises Rejection and
changes nothing. Domain time (E4) must not run backwards within a tenant (E6): a command without
`at` is dated max(now, the tenant's latest event time), so it is never rejected for time, however
many writers append concurrently (each retry decides again on the fresh state); an explicit `at`
before the tenant's latest event, or more than `MAX_AHEAD` after `now`, is rejected naming `at`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from domain import commands as c
from domain import contacts, lifecycle, mail, outbox, records, sync_rules
from domain import events as ev
from domain.context import Context
from domain.errors import Rejection
from domain.state import TenantState

HANDLERS: dict[str, Callable[[Context, Any], list[ev.DomainEvent]]] = {
    "AddUser": lifecycle.add_user,
    "ChangeUserManager": lifecycle.change_manager,
    "DeactivateUser": lifecycle.deactivate,
    "ReactivateUser": lifecycle.reactivate,
    "DeleteUser": lifecycle.delete,
    "RevokeTokens": lifecycle.revoke_tokens,
    "ConfigureTenant": lifecycle.configure_tenant,
    "SetGlobalVisibility": lifecycle.set_global_visibility,
    "ConnectMailbox": mail.connect,
    "ChangeMailboxAddress": mail.change_address,
    "ChangeMailboxScope": mail.change_scope,
    "DisconnectMailbox": mail.disconnect,
    "ReconnectMailbox": mail.reconnect,
    "ReportMailboxGone": mail.report_gone,
    "SyncMessage": mail.sync_message,
    "UpdateMessage": mail.update_message,
    "DeleteMessageAtProvider": mail.delete_at_provider,
    "ConfirmMailboxDeletions": mail.confirm_deletions,
    "AdvanceMailboxCursor": mail.advance_cursor,
    "ResyncMailbox": mail.resync,
    "SendEmail": mail.send_email,
    "LinkThread": mail.link_thread,
    "UnlinkThread": mail.link_thread,
    "MarkThreadShared": mail.mark_threads,
    "MarkThreadPrivate": mail.mark_threads,
    "CreateLead": records.create_lead,
    "CreateContact": records.create_contact,
    "UpdateContact": records.update_contact,
    "CreateDeal": records.create_deal,
    "ChangeDealStage": records.change_stage,
    "LinkDealContact": records.link_deal_contact,
    "UnlinkDealContact": records.unlink_deal_contact,
    "ChangeOwner": records.change_owner,
    "AddCollaborator": records.add_collaborator,
    "RemoveCollaborator": records.remove_collaborator,
    "ShareAddress": records.share_address,
    "UnshareAddress": records.unshare_address,
    "AcknowledgeExternalContactChange": contacts.acknowledge_change,
    "DeleteMessage": outbox.delete_message,
    "MarkMessageRead": outbox.mark_read,
    "AcknowledgeOutboundMail": outbox.acknowledge,
    **sync_rules.HANDLERS,
}
HANDLERS.update(contacts.handlers(HANDLERS))  # SPEC §5, and CRM changes that reach the books
assert set(HANDLERS) == set(c.COMMANDS), "every command needs a handler"

# How far an explicit `at` may lie ahead of the caller's clock (E6): further, and one command
# would date the tenant in the future and every later command would have to follow it there.
MAX_AHEAD = timedelta(minutes=5)


def decide(state: TenantState, cmd: c.Command, *, now: datetime, correlation_id: str,
           default_actor: str = "system:cli") -> list[ev.DomainEvent]:
    """The events `cmd` produces on `state`. `now` is the caller's clock: a command without `at`
    is dated max(now, state.last_at) (E6); an explicit `at` may not lie more than MAX_AHEAD after
    `now`, nor (for a command with effects) before the tenant's latest event.

    Raises Rejection when the command breaks a rule.
    """
    if cmd.tenant != state.tenant:
        raise ValueError(f"command for tenant {cmd.tenant!r} decided on {state.tenant!r}'s state")
    if cmd.command_id is not None and (cmd.actor or default_actor,
                                       cmd.command_id) in state.applied_commands:
        return []  # E5: already applied by this principal
    # E6: without `at`, the later of the caller's clock and the tenant's latest event: another
    # process may have appended since `now` was read (or the store made the caller wait)
    occurred_at = cmd.at or (now if state.last_at is None else max(now, state.last_at))
    ctx = Context(state, cmd.cmd, cmd.actor or default_actor, occurred_at,
                  cmd.command_id or correlation_id, cmd.command_id)
    events = HANDLERS[cmd.cmd](ctx, cmd)
    if not events and cmd.command_id is None:
        return []  # a harmless no-op (e.g. a re-delivered message): nothing is dated
    if cmd.at is not None and cmd.at > now + MAX_AHEAD:
        raise Rejection(cmd.cmd, "at", f"{cmd.at.isoformat()} is more than "
                        f"{int(MAX_AHEAD.total_seconds() // 60)} minutes after the current time "
                        f"({now.isoformat()})")
    if not events and cmd.command_id is not None:
        at = occurred_at if state.last_at is None else max(occurred_at, state.last_at)
        return [ev.CommandHadNoEffect(tenant=state.tenant, actor=ctx.actor, occurred_at=at,
                                      correlation_id=ctx.correlation_id,
                                      command_id=cmd.command_id, cmd=cmd.cmd)]
    if state.last_at is not None and occurred_at < state.last_at:
        # Only an explicit `at` can get here. A command with effects must not be dated before
        # the tenant's latest event (E4); a no-op (e.g. a re-applied command) stays a harmless
        # no-op.
        raise Rejection(cmd.cmd, "at", f"{occurred_at.isoformat()} is earlier than the tenant's "
                        f"latest event ({state.last_at.isoformat()}); domain time cannot run back")
    return events


def rejection_event(state: TenantState, cmd: c.Command | str, rejection: Rejection, *,
                    now: datetime, correlation_id: str, actor: str) -> ev.CommandRejected:
    """The audit record of a rejected command (E1). It changes no state but the audit trail and,
    for a command of a known mailbox (`cmd` given as a Command), that mailbox's sync status
    (`rejected`, `last_error`)."""
    at = now if state.last_at is None or now >= state.last_at else state.last_at
    cmd_name = cmd if isinstance(cmd, str) else cmd.cmd
    mailbox = None if isinstance(cmd, str) else getattr(cmd, "mailbox", None)
    if not isinstance(mailbox, str) or mailbox not in state.mailboxes:
        mailbox = None
    return ev.CommandRejected(tenant=state.tenant, actor=actor, occurred_at=at,
                              correlation_id=correlation_id, command_id=None, cmd=cmd_name,
                              field=rejection.field, reason=rejection.reason,
                              mailbox_id=mailbox)
