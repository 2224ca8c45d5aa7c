"""The fold of mailboxes, their threads and messages, and the outbox's requests (pure; see
`domain.state`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

from domain import events as ev
from domain.tenant import Mailbox, OutboundRequest, Push, TenantState, addresses, utc_iso
from domain.thread_table import Thread


def _mailbox_connected(s: TenantState, e: ev.MailboxConnected, seq: int) -> None:
    s.mailboxes[e.mailbox] = Mailbox(e.mailbox, e.user, e.provider, e.address.lower(), e.scope,
                                     e.backfill_days, credentials_set=e.credentials_set,
                                     address_since=seq)
    note_address(s, e)


def _mailbox_address_changed(s: TenantState, e: ev.MailboxAddressChanged, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.address = e.address.lower()
    mbx.address_since = seq
    note_address(s, e)


def note_address(s: TenantState, e: ev.MailboxConnected | ev.MailboxAddressChanged) -> None:
    """The tenant-wide part of a mailbox's (new) address: the users' addresses, and the
    mailbox's owner and address (folded at start by a state whose mailboxes wait)."""
    address = e.address.lower()
    s.user_addresses.add(address)
    user = e.user if isinstance(e, ev.MailboxConnected) else s.mailbox_addresses[e.mailbox][0]
    s.mailbox_addresses[e.mailbox] = (user, address)


def _mailbox_scope_changed(s: TenantState, e: ev.MailboxScopeChanged, seq: int) -> None:
    s.mailboxes[e.mailbox].scope = e.scope


# `last_error` reasons that name the mailbox's condition (L1, S10, L4), not one message's: they
# are over once the mailbox is reconnected or syncs again (issue #13).
CONDITION_ERRORS = ("user_deactivated", "user_deleted", "mailbox_disconnected", "mailbox_gone")


def _recovered(mbx: Mailbox) -> None:
    if mbx.last_error in CONDITION_ERRORS:
        mbx.last_error = None


def _mailbox_reconnected(s: TenantState, e: ev.MailboxReconnected, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.status = "connected"
    _recovered(mbx)


def _mailbox_status(status: str) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        s.mailboxes[e.mailbox].status = status

    return fold


def _cursor_advanced(s: TenantState, e: ev.MailboxCursorAdvanced, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.cursor = e.cursor
    mbx.cursor_at = e.occurred_at
    _recovered(mbx)  # a sync round completed


def _resync_started(s: TenantState, e: ev.MailboxResyncStarted, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.resync_since = e.since
    mbx.resync_reason = e.reason


def _push_created(s: TenantState, e: ev.PushSubscriptionCreated, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.push = Push(e.subscription_id, e.resource, mbx.address, e.expires_at, e.occurred_at,
                    scope=mbx.scope)


def _push_renewed(s: TenantState, e: ev.PushSubscriptionRenewed, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    if mbx.push is not None:
        mbx.push = replace(mbx.push, expires_at=e.expires_at, renewed_at=e.occurred_at,
                           scope=mbx.scope)  # a renewed Gmail watch takes the scope's labels


def _push_ended(s: TenantState, e: ev.PushSubscriptionEnded, seq: int) -> None:
    s.mailboxes[e.mailbox].push = None


def _credentials_removed(s: TenantState, e: ev.CredentialsRemoved, seq: int) -> None:
    s.mailboxes[e.mailbox].credentials_set = False


class SyncedMessage(NamedTuple):
    """A synced (or CRM-sent) message as the fold reads it: a MessageSynced's fields, or one
    decoded straight from its stored form (the event store's fast path, issue #15), so both
    fold alike. `participants` as `addresses` gives them, `sent_at` as `utc_iso` does. (A
    tuple: a frozen dataclass of this many fields took microseconds to make.)"""

    mailbox: str
    thread: str
    crm_initiated: bool
    occurred_at: datetime
    actor: str
    command_id: str | None
    id: str
    rfc_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    participants: tuple[str, ...]
    subject: str
    sent_at: str
    labels: tuple[str, ...]
    read: bool
    delivery_status: str | None


def synced_message(e: ev.MessageSynced | ev.EmailSent, crm_initiated: bool,
                   content: bool = True) -> SyncedMessage:
    """The fold's record of a message event; without its participants, subject and time when
    the state keeps no message content (`TenantState.message_content`)."""
    msg = e.message
    return SyncedMessage(
        e.mailbox, e.thread, crm_initiated, e.occurred_at, e.actor, e.command_id, msg.id,
        msg.message_id, msg.in_reply_to, tuple(msg.references or ()),
        addresses([msg.from_, *msg.to, *msg.cc, *msg.bcc]) if content else (),
        msg.subject if content else "", utc_iso(msg.sent_at) if content else "",
        tuple(msg.labels), msg.read, msg.delivery_status)


def _add_message(s: TenantState, m: SyncedMessage, seq: int) -> Mailbox:
    """Store a new message in its thread (`ThreadTable.add_synced`); its mailbox."""
    mailbox, thread_id, participants = m.mailbox, m.thread, m.participants
    mbx = s.mailboxes[mailbox]
    threads = s.threads
    n = threads.add_synced(mailbox, m.id, thread_id, seq, m.crm_initiated, m.rfc_id,
                           participants, m.subject, m.sent_at, m.labels, m.read,
                           m.delivery_status, s.index_rfc)
    mbx.stored += 1
    if s.index_rfc and (s.missing_parents or m.in_reply_to is not None or m.references):
        _index_rfc(s, m)  # (most messages: nothing missing, no ancestor named)
    if not participants:  # none, or a state without message content
        return mbx
    threads.join(n, participants)
    if s.address_threads is not None:
        for a in participants:
            s.address_threads.setdefault(a, set()).add(thread_id)
    return mbx


def _index_rfc(s: TenantState, m: SyncedMessage) -> None:
    """S13: this message's id (indexed by `ThreadTable.add_synced`), and every ancestor it
    names that was never synced, lead to its thread. First come wins (`setdefault`): the fold
    gives the same index on replay and whatever the batch boundaries, and a reference loop
    cannot move anything."""
    mailbox = m.mailbox
    if m.rfc_id:
        s.missing_parents.pop((mailbox, m.rfc_id), None)  # no longer missing
    for rfc in (m.in_reply_to, *m.references):
        if rfc and rfc != m.rfc_id and not s.messages.has_rfc(mailbox, rfc):
            s.missing_parents.setdefault((mailbox, rfc), m.thread)


def _delete_message(s: TenantState, mailbox: str, message_id: str, recount: bool = True
                    ) -> str | None:
    """Mark the message deleted; returns its thread (None: it was already deleted). The
    thread's participants are recounted unless the caller recounts once for many deletions."""
    msg = s.messages[(mailbox, message_id)]
    if msg.deleted:
        return None
    s.messages[(mailbox, message_id)] = replace(msg, deleted=True)
    s.mailboxes[mailbox].stored -= 1
    if recount:
        _recount(s, s.threads[msg.thread])
    return msg.thread


def _recount(s: TenantState, thread: Thread) -> None:
    if not s.message_content:
        return
    seen: dict[str, None] = {}
    for msg in s.live_messages(thread):
        seen.update(dict.fromkeys(msg.participants))
    thread.participants = tuple(seen)


def _message_synced(s: TenantState, e: ev.MessageSynced, seq: int) -> None:
    fold_synced(s, synced_message(e, e.crm_initiated, s.message_content), seq)


def fold_synced(s: TenantState, m: SyncedMessage, seq: int) -> None:
    """MessageSynced's fold (`domain.state.evolve_synced` adds the envelope's part)."""
    mbx = _add_message(s, m, seq)
    mbx.synced += 1
    mbx.last_sync_at = m.occurred_at
    if mbx.last_error is not None:
        _recovered(mbx)


def _email_sent(s: TenantState, e: ev.EmailSent, seq: int) -> None:
    _add_message(s, synced_message(e, True, s.message_content), seq)
    s.outbound[e.message.id] = OutboundRequest(e.mailbox, e.message.id, "send", seq)
    s.sent_provider_ids[(e.mailbox, e.message.id)] = None


def _message_updated(s: TenantState, e: ev.MessageUpdated, seq: int) -> None:
    msg = s.messages[(e.mailbox, e.id)]
    s.messages[(e.mailbox, e.id)] = replace(
        msg, labels=msg.labels if e.labels is None else tuple(e.labels),
        read=msg.read if e.read is None else e.read,
        delivery_status=msg.delivery_status if e.delivery_status is None else e.delivery_status)


def _message_deleted(s: TenantState, e: ev.MessageDeletedAtProvider, seq: int) -> None:
    _delete_message(s, e.mailbox, e.id)


def _deletion_held(s: TenantState, e: ev.MessageDeletionHeld, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.pending_deletions.append(e.id)
    mbx.last_error = e.reason


def _deletions_confirmed(s: TenantState, e: ev.MailboxDeletionsConfirmed, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    if e.applied:
        threads = {_delete_message(s, e.mailbox, mid, recount=False) for mid in e.ids}
        for tid in sorted(t for t in threads if t is not None):
            _recount(s, s.threads[tid])
    mbx.pending_deletions = []
    if mbx.last_error is not None and mbx.last_error.startswith(("mass_delete_guard:",
                                                                 "mailbox_suspect:")):
        mbx.last_error = None  # the operator decided (L5): nothing is held any more


def _skipped(s: TenantState, e: ev.MessageSkipped | ev.DeliverySkipped, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.skipped += 1
    mbx.last_error = e.reason


def _command_rejected(s: TenantState, e: ev.CommandRejected, seq: int) -> None:
    """A rejected command of a mailbox (a sync batch's message, cursor...) counts in its sync
    status, so a rejection is never silent beside a cursor that moved on."""
    mbx = s.mailboxes.get(e.mailbox_id) if e.mailbox_id is not None else None
    if mbx is not None:
        mbx.rejected += 1
        mbx.last_error = f"{e.cmd}: {e.field}: {e.reason}"


def _delivery_dead_lettered(s: TenantState, e: ev.DeliveryDeadLettered, seq: int) -> None:
    """A delivery given up after its retries is a rejected delivery of its mailbox."""
    mbx = s.mailboxes.get(e.mailbox_id) if e.mailbox_id is not None else None
    if mbx is not None:
        mbx.rejected += 1
        mbx.last_error = f"dead letter: {e.error}"


def _attachment_rejected(s: TenantState, e: ev.AttachmentRejected, seq: int) -> None:
    mbx = s.mailboxes[e.mailbox]
    mbx.rejected += 1
    mbx.last_error = e.reason


def _deletion_requested(s: TenantState, e: ev.MessageDeletionRequested, seq: int) -> None:
    _delete_message(s, e.mailbox, e.id)
    s.crm_deleted.add((e.mailbox, e.id))
    s.outbound[e.request] = OutboundRequest(e.mailbox, e.id, "delete", seq)


def _read_requested(s: TenantState, e: ev.MessageReadRequested, seq: int) -> None:
    key = (e.mailbox, e.id)
    s.messages[key] = replace(s.messages[key], read=e.read)
    s.outbound[e.request] = OutboundRequest(e.mailbox, e.id, "read", seq, e.read)


def _provider_ids(s: TenantState, mailbox: str, local: str, provider_id: str | None,
                  provider_thread_id: str | None) -> None:
    if provider_id is not None:
        s.sent_provider_ids[(mailbox, local)] = provider_id
        s.local_ids[(mailbox, provider_id)] = local
    if provider_thread_id is not None:
        s.thread_aliases[f"{mailbox}:{provider_thread_id}"] = s.messages[(mailbox, local)].thread


def _outbound_acknowledged(s: TenantState, e: ev.OutboundMailAcknowledged, seq: int) -> None:
    s.outbound.pop(e.request, None)
    if e.operation == "send":
        key = (e.mailbox, e.id)
        s.messages[key] = replace(s.messages[key], delivery_status="sent" if e.ok else "failed")
        _provider_ids(s, e.mailbox, e.id, e.provider_id, e.provider_thread_id)
    mbx = s.mailboxes[e.mailbox]
    if not e.ok:
        mbx.last_error = f"outbox: {e.error}"
    elif mbx.last_error is not None and mbx.last_error.startswith("outbox: "):
        mbx.last_error = None  # the outbox reaches the provider again


def _copy_matched(s: TenantState, e: ev.OutboundCopyMatched, seq: int) -> None:
    _provider_ids(s, e.mailbox, e.id, e.provider_id, e.provider_thread_id)
    msg = s.messages[(e.mailbox, e.id)]
    s.messages[(e.mailbox, e.id)] = replace(
        msg,  # the provider has it: it was sent
        delivery_status="sent" if msg.delivery_status == "queued" else msg.delivery_status,
        labels=tuple(e.labels) if e.labels else msg.labels,
        read=msg.read if e.read is None else e.read)


def _content_erased(s: TenantState, e: ev.UserContentErased, seq: int) -> None:
    """L2: the state forgets the erased user's subjects too, so no later snapshot holds them."""
    if not s.message_content:
        return  # it holds none
    for mbx in [m for m in s.mailboxes.values() if m.user == e.user]:
        for thread_id in s.mailbox_threads.get(mbx.id, []):
            for message_id in s.threads[thread_id].messages:
                msg = s.messages[(mbx.id, message_id)]
                if msg.subject != ev.ERASED:
                    s.messages[(mbx.id, message_id)] = replace(msg, subject=ev.ERASED)


FOLDS: dict[type[ev.DomainEvent], Callable[[TenantState, Any, int], None]] = {
    ev.UserContentErased: _content_erased,
    ev.MailboxConnected: _mailbox_connected,
    ev.MailboxAddressChanged: _mailbox_address_changed,
    ev.MailboxDisconnected: _mailbox_status("disconnected"),
    ev.MailboxReconnected: _mailbox_reconnected,
    ev.MailboxScopeChanged: _mailbox_scope_changed,
    ev.MailboxReportedGone: _mailbox_status("gone"),
    ev.CredentialsRemoved: _credentials_removed,
    ev.MailboxCursorAdvanced: _cursor_advanced,
    ev.DeliverySkipped: _skipped,
    ev.MailboxResyncStarted: _resync_started,
    ev.MessageSynced: _message_synced,
    ev.EmailSent: _email_sent,
    ev.MessageUpdated: _message_updated,
    ev.MessageDeletedAtProvider: _message_deleted,
    ev.MessageDeletionHeld: _deletion_held,
    ev.MailboxDeletionsConfirmed: _deletions_confirmed,
    ev.MessageSkipped: _skipped,
    ev.AttachmentRejected: _attachment_rejected,
    ev.CommandRejected: _command_rejected,
    ev.MessageDeletionRequested: _deletion_requested,
    ev.MessageReadRequested: _read_requested,
    ev.OutboundMailAcknowledged: _outbound_acknowledged,
    ev.OutboundCopyMatched: _copy_matched,
    ev.DeliveryDeadLettered: _delivery_dead_lettered,
    ev.PushSubscriptionCreated: _push_created,
    ev.PushSubscriptionRenewed: _push_renewed,
    ev.PushSubscriptionEnded: _push_ended,
}
