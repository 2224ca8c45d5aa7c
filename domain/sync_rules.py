"""Rules the sync workers need beyond SPEC §6's table (issue #4): a page's deletions judged as one
batch by the L5 guard, and the audit records of dead letters."""

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


HANDLERS: dict[str, Callable[[Context, Any], list[ev.DomainEvent]]] = {
    "DeleteMessagesAtProvider": delete_batch,
    "RecordDeadLetter": record_dead_letter,
    "RecordDeadLetterReplay": record_replay,
}
