"""Rules the sync workers need beyond SPEC §6's table (issue #4): a page's deletions judged as one
batch by the L5 guard, the audit records of dead letters, and the bookkeeping of each mailbox's
push channel (Graph subscription, Gmail watch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain import commands as c
from domain import events as ev
from domain.context import Context
from domain.mail import skip_reason


def delete_batch(ctx: Context, cmd: c.DeleteMessagesAtProvider) -> list[ev.DomainEvent]:
    """S12 under L5: the deletions one provider page reports, as one batch. Ids the mailbox does
    not hold (never synced, already deleted, already held) are ignored. If the batch would delete
    more than `mass_delete_threshold` of the mailbox's stored messages — or every one of them
    ("mailbox empty") — or the mailbox is already suspect, every deletion is held."""
    s = ctx.state
    mbx = ctx.mailbox(cmd.mailbox)
    ids = [i for i in dict.fromkeys(cmd.ids)
           if (m := s.messages.get((cmd.mailbox, i))) is not None and not m.deleted
           and i not in mbx.pending_deletions]
    if not ids:
        return []
    reason = skip_reason(s, mbx)
    if reason is not None:
        return [ctx.event(ev.MessageSkipped, mailbox=cmd.mailbox, id=i, reason=reason)
                for i in ids]
    stored = mbx.stored
    threshold = s.settings.mass_delete_threshold
    held: str | None = None
    if mbx.suspect:
        held = "mailbox_suspect: deletions are held until confirmed"
    elif len(ids) > threshold * stored or len(ids) >= stored:
        held = (f"mass_delete_guard: a batch would delete {len(ids)} of {stored} stored "
                f"messages (threshold {threshold:.0%})")
    if held is not None:
        return [ctx.event(ev.MessageDeletionHeld, mailbox=cmd.mailbox, id=i, reason=held)
                for i in ids]
    return [ctx.event(ev.MessageDeletedAtProvider, mailbox=cmd.mailbox, id=i) for i in ids]


def record_dead_letter(ctx: Context, cmd: c.RecordDeadLetter) -> list[ev.DomainEvent]:
    return [ctx.event(ev.DeliveryDeadLettered, dead_letter_id=cmd.dead_letter_id,
                      provider=cmd.provider, delivery_id=cmd.delivery_id,
                      mailbox_id=cmd.mailbox, attempts=cmd.attempts, error=cmd.error)]


def record_replay(ctx: Context, cmd: c.RecordDeadLetterReplay) -> list[ev.DomainEvent]:
    return [ctx.event(ev.DeadLetterReplayed, dead_letter_id=cmd.dead_letter_id,
                      delivery_id=cmd.delivery_id)]


def record_push(ctx: Context, cmd: c.RecordPushSubscription) -> list[ev.DomainEvent]:
    """The mailbox's push channel, so that a lifecycle notification naming only its subscription
    id finds its mailbox, and an auditor sees when push was (re)created. A channel is created or
    renewed only for a mailbox that syncs (L1, S10, L4: none for a deactivated user's, a
    disconnected or a gone mailbox); a renewal must name the current subscription. Recording
    what is already recorded changes nothing; an end of a subscription that is not the current
    one is nothing to record."""
    mbx = ctx.mailbox(cmd.mailbox)
    current = mbx.push
    if cmd.action == "ended":
        if current is None or current.subscription_id != cmd.subscription_id:
            return []
        return [ctx.event(ev.PushSubscriptionEnded, mailbox=cmd.mailbox,
                          subscription_id=cmd.subscription_id, reason=cmd.reason)]
    if cmd.expires_at is None:
        raise ctx.reject("expires_at", f"required when the subscription is {cmd.action}")
    reason = skip_reason(ctx.state, mbx)
    if reason is not None:
        raise ctx.reject("mailbox", f"no push subscription: {reason}")
    if cmd.action == "renewed":
        if current is None or current.subscription_id != cmd.subscription_id:
            raise ctx.reject("subscription_id", "not the mailbox's current push subscription")
        if current.expires_at == cmd.expires_at:
            return []
        return [ctx.event(ev.PushSubscriptionRenewed, mailbox=cmd.mailbox,
                          subscription_id=cmd.subscription_id, expires_at=cmd.expires_at,
                          reason=cmd.reason)]
    if cmd.resource is None:
        raise ctx.reject("resource", "required when the subscription is created")
    # a watch made again for a new scope is news even when the provider kept its expiry
    if current is not None and cmd.reason != "scope_changed" and (
            current.subscription_id, current.expires_at,
            current.resource) == (cmd.subscription_id, cmd.expires_at, cmd.resource):
        return []
    return [ctx.event(ev.PushSubscriptionCreated, mailbox=cmd.mailbox,
                      subscription_id=cmd.subscription_id, resource=cmd.resource,
                      expires_at=cmd.expires_at, reason=cmd.reason,
                      replaces=current.subscription_id if current else None)]


HANDLERS: dict[str, Callable[[Context, Any], list[ev.DomainEvent]]] = {
    "DeleteMessagesAtProvider": delete_batch,
    "RecordDeadLetter": record_dead_letter,
    "RecordDeadLetterReplay": record_replay,
    "RecordPushSubscription": record_push,
}
