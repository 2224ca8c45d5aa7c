"""The outbox's decisions (S7, S12, S14): CRM-side mail changes that the outbox worker executes at
the provider, the worker's acknowledgements, and the provider's copy of CRM-sent mail.

- SendEmail (in `mail.py`) records `EmailSent`: request id = the message id `crm-N`.
- DeleteMessage / MarkMessageRead by the mailbox's owner change the CRM copy at once and record
  an outbound request `out-<seq>` (the event's position in the tenant's stream).
- AcknowledgeOutboundMail (service only) closes a pending request: a send becomes `sent` with the
  provider's ids, or `failed` once the worker gave up.
- A message synced from the provider whose id is a sent message's provider id, or whose RFC
  Message-ID is a CRM-sent message's, is that message (`OutboundCopyMatched`), not a second copy.
"""

from __future__ import annotations

from domain import commands as c
from domain import events as ev
from domain.context import Context
from domain.state import Mailbox, TenantState


def local_id(state: TenantState, mailbox: str, message_id: str) -> str:
    """The CRM's id of a message the provider names `message_id` (a CRM-sent message's
    provider id maps to its `crm-N` id; every other id is its own)."""
    return state.local_ids.get((mailbox, message_id), message_id)


def owner_mailbox(ctx: Context, user: str, mailbox_id: str) -> Mailbox:
    ctx.user(user, active=True)
    mbx = ctx.mailbox(mailbox_id)
    if mbx.user != user:
        raise ctx.reject("mailbox", f"mailbox {mailbox_id!r} is not a mailbox of {user!r}")
    if mbx.status != "connected":
        raise ctx.reject("mailbox", f"mailbox {mailbox_id!r} is {mbx.status}")
    return mbx


def _message(ctx: Context, mailbox: str, message_id: str) -> str:
    mid = local_id(ctx.state, mailbox, message_id)
    if (mailbox, mid) not in ctx.state.messages:
        raise ctx.reject("id", f"unknown message {message_id!r} in mailbox {mailbox!r}")
    return mid


def delete_message(ctx: Context, cmd: c.DeleteMessage) -> list[ev.DomainEvent]:
    """S12: the owner deletes a message; gone from the CRM at once, trashed at the provider by
    the outbox. Not subject to L5 (an explicit user action, not an observed mass deletion)."""
    owner_mailbox(ctx, cmd.user, cmd.mailbox)
    mid = _message(ctx, cmd.mailbox, cmd.id)
    if ctx.state.messages[(cmd.mailbox, mid)].deleted:
        return []
    return [ctx.event(ev.MessageDeletionRequested, mailbox=cmd.mailbox, id=mid,
                      request=f"out-{ctx.state.seq + 1}")]


def mark_read(ctx: Context, cmd: c.MarkMessageRead) -> list[ev.DomainEvent]:
    """S12: the owner marks a message read or unread; the CRM copy at once, the provider's by
    the outbox."""
    owner_mailbox(ctx, cmd.user, cmd.mailbox)
    mid = _message(ctx, cmd.mailbox, cmd.id)
    msg = ctx.state.messages[(cmd.mailbox, mid)]
    if msg.deleted:
        raise ctx.reject("id", f"message {cmd.id!r} is deleted")
    if msg.read == cmd.read:
        return []
    return [ctx.event(ev.MessageReadRequested, mailbox=cmd.mailbox, id=mid, read=cmd.read,
                      request=f"out-{ctx.state.seq + 1}")]


def acknowledge(ctx: Context, cmd: c.AcknowledgeOutboundMail) -> list[ev.DomainEvent]:
    ctx.mailbox(cmd.mailbox)
    request = ctx.state.outbound.get(cmd.request)
    if request is None or request.mailbox != cmd.mailbox:
        raise ctx.reject("request", f"no pending outbound request {cmd.request!r} in mailbox "
                         f"{cmd.mailbox!r}")
    if not cmd.ok and not cmd.error:
        raise ctx.reject("error", "a failed request needs the reason")
    if cmd.provider_id is not None and request.operation == "send":
        taken = ctx.state.local_ids.get((cmd.mailbox, cmd.provider_id))
        if taken is not None and taken != request.id:
            raise ctx.reject("provider_id", f"provider id already belongs to {taken!r}")
    return [ctx.event(ev.OutboundMailAcknowledged, mailbox=cmd.mailbox, request=cmd.request,
                      id=request.id, operation=request.operation, ok=cmd.ok,
                      provider_id=cmd.provider_id if cmd.ok else None,
                      provider_thread_id=cmd.provider_thread_id if cmd.ok else None,
                      error=cmd.error, attempts=cmd.attempts)]


def provider_copy(ctx: Context, mailbox: str, msg: ev.MailMessage) -> list[ev.DomainEvent] | None:
    """S14 for CRM-sent mail: the provider's copy of a `crm-N` message is that message. Matched
    by the provider id from the ack, else by RFC Message-ID. None: not such a copy."""
    s = ctx.state
    if (mailbox, msg.id) in s.local_ids:
        return []  # already known under its crm id
    if not msg.message_id:
        return None
    thread_id = s.rfc_index.get((mailbox, msg.message_id))
    if thread_id is None:
        return None
    for mid in s.threads[thread_id].messages:
        if s.messages[(mailbox, mid)].rfc_id == msg.message_id \
                and (mailbox, mid) in s.sent_provider_ids \
                and s.sent_provider_ids[(mailbox, mid)] is None:
            return [ctx.event(ev.OutboundCopyMatched, mailbox=mailbox, id=mid,
                              provider_id=msg.id, provider_thread_id=msg.thread_id,
                              labels=msg.labels, read=msg.read)]
    return None
