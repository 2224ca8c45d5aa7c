"""Mailbox and mail-sync decisions (SPEC §3 L1/L4/L5, §4 S1, S3-S9, S11-S14)."""

from __future__ import annotations

from datetime import timedelta

from domain import commands as c
from domain import events as ev
from domain import outbox
from domain.context import Context
from domain.state import Mailbox, TenantState


def connect(ctx: Context, cmd: c.ConnectMailbox) -> list[ev.DomainEvent]:
    if cmd.mailbox in ctx.state.mailboxes:
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} already exists; use ReconnectMailbox")
    ctx.user(cmd.user, active=True)
    scope = cmd.scope.model_dump() if cmd.scope is not None else {"mode": "all"}
    return [ctx.event(ev.MailboxConnected, mailbox=cmd.mailbox, user=cmd.user,
                      provider=cmd.provider, address=cmd.address.lower(), scope=scope,
                      backfill_days=cmd.backfill_days,
                      credentials_set=cmd.credentials is not None)]


def change_address(ctx: Context, cmd: c.ChangeMailboxAddress) -> list[ev.DomainEvent]:
    mbx = ctx.mailbox(cmd.mailbox)
    if mbx.address == cmd.address.lower():
        return []
    return [ctx.event(ev.MailboxAddressChanged, mailbox=cmd.mailbox, address=cmd.address.lower())]


def change_scope(ctx: Context, cmd: c.ChangeMailboxScope) -> list[ev.DomainEvent]:
    """S1: the new scope applies to mail synced from now on (what was synced stays; mail that
    comes into scope is synced when the provider reports it, or by the next resync)."""
    mbx = ctx.mailbox(cmd.mailbox)
    scope = cmd.scope.model_dump()
    if mbx.status == "gone":
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} is gone")
    if scope == mbx.scope:
        return []
    return [ctx.event(ev.MailboxScopeChanged, mailbox=cmd.mailbox, scope=scope)]


def disconnect(ctx: Context, cmd: c.DisconnectMailbox) -> list[ev.DomainEvent]:
    mbx = ctx.mailbox(cmd.mailbox)
    if mbx.status != "connected":
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} is {mbx.status}, not connected")
    out: list[ev.DomainEvent] = [ctx.event(ev.MailboxDisconnected, mailbox=cmd.mailbox)]
    if mbx.credentials_set:
        out.append(ctx.event(ev.CredentialsRemoved, mailbox=cmd.mailbox))
    return out


def reconnect(ctx: Context, cmd: c.ReconnectMailbox) -> list[ev.DomainEvent]:
    mbx = ctx.mailbox(cmd.mailbox)
    if mbx.status == "connected":
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} is connected already")
    ctx.user(mbx.user, "mailbox", active=True)
    return [ctx.event(ev.MailboxReconnected, mailbox=cmd.mailbox)]


def report_gone(ctx: Context, cmd: c.ReportMailboxGone) -> list[ev.DomainEvent]:
    """L4: the account no longer exists. The mailbox becomes `gone`; nothing is deleted."""
    mbx = ctx.mailbox(cmd.mailbox)
    if mbx.status == "gone":
        return []
    return [ctx.event(ev.MailboxReportedGone, mailbox=cmd.mailbox)]


def skip_reason(state: TenantState, mbx: Mailbox) -> str | None:
    """L1, S10, L4: why provider input for this mailbox is not applied now, if it is not."""
    status = state.users[mbx.user].status
    if status == "deactivated":
        return "user_deactivated"
    if status == "deleted":
        return "user_deleted"
    if mbx.status != "connected":
        return f"mailbox_{mbx.status}"
    return None


def advance_cursor(ctx: Context, cmd: c.AdvanceMailboxCursor) -> list[ev.DomainEvent]:
    """L1, S10, L4: a delivery for a deactivated or deleted user, or a mailbox that is not
    connected, is recorded as skipped and the cursor does not move (so L3 can catch up)."""
    mbx = ctx.mailbox(cmd.mailbox)
    reason = skip_reason(ctx.state, mbx)
    if reason is not None:
        return [ctx.event(ev.DeliverySkipped, mailbox=cmd.mailbox, delivery_id=cmd.delivery_id,
                          reason=reason)]
    if mbx.cursor == cmd.cursor:
        return []
    return [ctx.event(ev.MailboxCursorAdvanced, mailbox=cmd.mailbox, cursor=cmd.cursor,
                      delivery_id=cmd.delivery_id)]


def resync(ctx: Context, cmd: c.ResyncMailbox) -> list[ev.DomainEvent]:
    """S2/L3: the backfill window is `backfill_days` before now; only a connected mailbox of an
    active user resyncs (a gone mailbox keeps its history untouched, L4)."""
    mbx = ctx.mailbox(cmd.mailbox)
    reason = skip_reason(ctx.state, mbx)
    if reason is not None:
        raise ctx.reject("mailbox", f"cannot resync: {reason}")
    since = ctx.occurred_at - timedelta(days=mbx.backfill_days)
    return [ctx.event(ev.MailboxResyncStarted, mailbox=cmd.mailbox, reason=cmd.reason,
                      since=since)]


def resolve_thread(state: TenantState, mailbox: str, msg: ev.MailMessage) -> str:
    """S13: provider thread id; else the thread of another copy of this RFC message in this
    mailbox (the same mail in two IMAP folders, or moved between them: a new provider id); else
    References/In-Reply-To within this mailbox, nearest ancestor first; else a new one.

    S13 (amended, jwz-style): an ancestor that was never synced still leads to the thread of the
    first message that named it (`missing_parents`), so replies to one missing parent share a
    thread, and that parent, when it arrives later, joins it. Only index entries are followed,
    so a reference loop cannot loop. Never by subject.
    """
    if msg.thread_id:
        given = f"{mailbox}:{msg.thread_id}"
        return state.thread_aliases.get(given, given)  # a CRM thread's provider thread id
    candidates = [msg.message_id] if msg.message_id else []
    candidates += [msg.in_reply_to] if msg.in_reply_to else []
    candidates += list(reversed(msg.references or []))
    for rfc in candidates:
        found = state.rfc_index.get((mailbox, rfc))
        if found is None:
            found = state.missing_parents.get((mailbox, rfc))
        if found is not None:
            return found
    return f"{mailbox}:crmsync-{msg.id}"


def replies_to_crm_thread(state: TenantState, mailbox: str, msg: ev.MailMessage) -> bool:
    """S7: a reply to CRM-sent mail is part of a CRM-initiated conversation even when the provider
    files it under its own thread id (Gmail/Graph give one for every message)."""
    for rfc in [msg.in_reply_to, *(msg.references or [])]:
        found = state.rfc_index.get((mailbox, rfc)) if rfc else None
        if found is not None and state.threads[found].crm_initiated:
            return True
    return False


def in_scope(state: TenantState, mbx: Mailbox, msg: ev.MailMessage, thread_id: str,
             crm_thread: bool) -> bool:
    """S1: scope `all`, or a label (Gmail label, Outlook folder or category, IMAP folder) the
    scope selects; and the user's own sent mail in a thread already synced (in scope); and
    (S7) CRM-initiated threads whatever the labels."""
    if mbx.scope.get("mode") != "labels" or crm_thread:
        return True
    if set(msg.labels) & set(mbx.scope.get("labels", [])):
        return True
    own = {state.users[mbx.user].email} | {address for user, address
                                            in state.mailbox_addresses.values()
                                            if user == mbx.user}
    return msg.from_.lower() in own and thread_id in state.threads


def attachment_problem(state: TenantState, att: ev.Attachment) -> str | None:
    """S8: the reason an attachment is not allowed, or None."""
    settings = state.settings
    ext = att.name.rsplit(".", 1)[-1].lower() if "." in att.name else ""
    if ext not in settings.allowed_attachment_types:
        return f"type_not_allowed: {att.name} ({ext or 'no extension'})"
    if att.size > settings.attachment_max_bytes:
        return f"too_large: {att.name} ({att.size} > {settings.attachment_max_bytes} bytes)"
    return None


def smart_bcc_contacts(ctx: Context, mbx: Mailbox, msg: ev.MailMessage) -> list[ev.DomainEvent]:
    """S6: the BCC drop box among the recipients creates a contact per unknown external
    recipient (owner: the sending user)."""
    s = ctx.state
    bcc = s.settings.bcc_address
    recipients = [a.lower() for a in [*msg.to, *msg.cc, *msg.bcc]]
    if bcc is None or bcc not in recipients:
        return []
    out: list[ev.DomainEvent] = []
    for address in dict.fromkeys(recipients):
        if address == bcc or address in s.user_addresses or s.address_records.get(address):
            continue
        record = f"bcc-{address}"
        n = 1
        while record in s.records:
            n += 1
            record = f"bcc-{address}-{n}"
        out.append(ctx.event(ev.ContactCreated, record=record, owner=mbx.user, name=address,
                             kind="person", emails=[address], via="smart_bcc"))
    return out


def sync_message(ctx: Context, cmd: c.SyncMessage) -> list[ev.DomainEvent]:
    s = ctx.state
    mbx = ctx.mailbox(cmd.mailbox)
    msg = cmd.message
    if (cmd.mailbox, msg.id) in s.messages:
        return []  # S14: the same provider message in one mailbox is one message
    copy = outbox.provider_copy(ctx, cmd.mailbox, msg)
    if copy is not None:
        return copy  # the provider's copy of a CRM-sent message (S14)
    reason = skip_reason(s, mbx)
    thread_id = resolve_thread(s, cmd.mailbox, msg)
    thread = s.threads.get(thread_id)
    crm_thread = (thread is not None and thread.crm_initiated) \
        or replies_to_crm_thread(s, cmd.mailbox, msg)
    if reason is None and thread is not None and thread.created_seq < mbx.address_since:
        # S9 (HighLevel 003): every thread of the old address stops, CRM-started ones too
        reason = "thread_of_old_address"
    if reason is None and not in_scope(s, mbx, msg, thread_id, crm_thread):
        reason = "out_of_scope"
    problems = [(a, p) for a in msg.attachments if (p := attachment_problem(s, a)) is not None]
    if reason is None and problems and s.settings.attachment_policy == "skip_message":
        reason = "attachment_not_allowed: " + "; ".join(p for _, p in problems)
    if reason is not None:
        return [ctx.event(ev.MessageSkipped, mailbox=cmd.mailbox, id=msg.id, reason=reason)]
    kept = msg
    if problems:
        bad = {id(a) for a, _ in problems}  # by identity: two attachments may share a name
        kept = msg.model_copy(update={"attachments": [a for a in msg.attachments
                                                      if id(a) not in bad]})
    out = smart_bcc_contacts(ctx, mbx, msg)
    out.append(ctx.event(ev.MessageSynced, mailbox=cmd.mailbox, thread=thread_id, message=kept,
                         crm_initiated=crm_thread,
                         refused=[ev.RefusedAttachment(**a.model_dump(), reason=p)
                                  for a, p in problems]))
    out += [ctx.event(ev.AttachmentRejected, mailbox=cmd.mailbox, id=msg.id, attachment=a.name,
                      reason=p) for a, p in problems]
    return out


def _known_message(ctx: Context, mailbox: str, message_id: str) -> None:
    msg = ctx.state.messages.get((mailbox, message_id))
    if msg is None:
        raise ctx.reject("id", f"unknown message {message_id!r} in mailbox {mailbox!r}")
    if msg.deleted:
        raise ctx.reject("id", f"message {message_id!r} was deleted at the provider")


def update_message(ctx: Context, cmd: c.UpdateMessage) -> list[ev.DomainEvent]:
    mbx = ctx.mailbox(cmd.mailbox)
    cmd = cmd.model_copy(update={"id": outbox.local_id(ctx.state, cmd.mailbox, cmd.id)})
    if (cmd.mailbox, cmd.id) in ctx.state.crm_deleted:
        return []  # deleted in the CRM (S12): the provider's later news about it changes nothing
    _known_message(ctx, cmd.mailbox, cmd.id)
    if cmd.labels is None and cmd.read is None and cmd.delivery_status is None:
        raise ctx.reject("labels", "nothing to update: give labels, read or delivery_status")
    reason = skip_reason(ctx.state, mbx)
    if reason is not None:
        return [ctx.event(ev.MessageSkipped, mailbox=cmd.mailbox, id=cmd.id, reason=reason)]
    return [ctx.event(ev.MessageUpdated, mailbox=cmd.mailbox, id=cmd.id, labels=cmd.labels,
                      read=cmd.read, delivery_status=cmd.delivery_status)]


def delete_at_provider(ctx: Context, cmd: c.DeleteMessageAtProvider) -> list[ev.DomainEvent]:
    """S12 under the L5 guard: a batch deleting more than the threshold is held, mailbox suspect."""
    s = ctx.state
    mbx = ctx.mailbox(cmd.mailbox)
    cmd = cmd.model_copy(update={"id": outbox.local_id(s, cmd.mailbox, cmd.id)})
    if (cmd.mailbox, cmd.id) in s.crm_deleted:
        return []  # deleted in the CRM already (S12): not a deletion for the L5 guard
    _known_message(ctx, cmd.mailbox, cmd.id)
    reason = skip_reason(s, mbx)
    if reason is not None:
        return [ctx.event(ev.MessageSkipped, mailbox=cmd.mailbox, id=cmd.id, reason=reason)]
    if cmd.id in mbx.pending_deletions:
        return []
    stored = mbx.stored
    if mbx.suspect:
        return [ctx.event(ev.MessageDeletionHeld, mailbox=cmd.mailbox, id=cmd.id,
                          reason="mailbox_suspect: deletions are held until confirmed")]
    if s.settings.mass_delete_threshold * stored < 1:
        return [ctx.event(ev.MessageDeletionHeld, mailbox=cmd.mailbox, id=cmd.id,
                          reason=f"mass_delete_guard: would delete 1 of {stored} stored "
                                 f"messages (threshold {s.settings.mass_delete_threshold:.0%})")]
    return [ctx.event(ev.MessageDeletedAtProvider, mailbox=cmd.mailbox, id=cmd.id)]


def confirm_deletions(ctx: Context, cmd: c.ConfirmMailboxDeletions) -> list[ev.DomainEvent]:
    mbx = ctx.mailbox(cmd.mailbox)
    if not mbx.suspect:
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} has no held deletions")
    ids = [i for i in mbx.pending_deletions
           if not ctx.state.messages[(cmd.mailbox, i)].deleted]
    return [ctx.event(ev.MailboxDeletionsConfirmed, mailbox=cmd.mailbox, applied=cmd.apply,
                      ids=ids)]


def sender_address(ctx: Context, cmd: c.SendEmail, mbx: Mailbox) -> str:
    """S11: single -> the connected address; bulk -> it when From equals it, else the tenant's
    sending domain; workflow -> the sending domain."""
    if cmd.kind == "single" or (cmd.kind == "bulk" and cmd.from_ is not None
                                and cmd.from_.lower() == mbx.address):
        return mbx.address
    domain = ctx.state.settings.sending_domain
    if domain is None:
        raise ctx.reject("kind", f"{cmd.kind} mail needs the tenant's sending_domain "
                         "(ConfigureTenant)")
    local = ctx.state.users[cmd.user].email.split("@", 1)[0]
    return f"{local}@{domain}"


def send_email(ctx: Context, cmd: c.SendEmail) -> list[ev.DomainEvent]:
    """S7: a CRM-initiated message, recorded for the outbox; its thread syncs both ways."""
    ctx.user(cmd.user, active=True)
    mbx = ctx.mailbox(cmd.mailbox)
    if mbx.user != cmd.user:
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} is not a mailbox of {cmd.user!r}")
    if mbx.status != "connected":
        raise ctx.reject("mailbox", f"mailbox {cmd.mailbox!r} is {mbx.status}")
    seq = ctx.state.seq + 1
    thread = f"{cmd.mailbox}:crm-{seq}"
    if cmd.thread is not None:
        if ctx.thread(cmd.thread).mailbox != cmd.mailbox:
            raise ctx.reject("thread", f"thread {cmd.thread!r} is not in mailbox {cmd.mailbox!r}")
        thread = cmd.thread
    message = ev.MailMessage(
        id=f"crm-{seq}", message_id=f"<crm-{seq}.{ctx.state.tenant}@crmsync.invalid>",
        from_=sender_address(ctx, cmd, mbx), to=cmd.to, cc=cmd.cc, subject=cmd.subject,
        body=cmd.body, sent_at=ctx.occurred_at, read=True, delivery_status="queued")
    return [ctx.event(ev.EmailSent, user=cmd.user, mailbox=cmd.mailbox, kind=cmd.kind,
                      thread=thread, message=message)]


def _own_thread(ctx: Context, user: str, thread_id: str, field: str) -> None:
    thread = ctx.thread(thread_id, field)
    owner = ctx.state.thread_owner(thread)
    if owner != user:
        raise ctx.reject(field, f"thread {thread_id!r} belongs to {owner!r}, not {user!r}")


def link_thread(ctx: Context, cmd: c.LinkThread | c.UnlinkThread) -> list[ev.DomainEvent]:
    ctx.user(cmd.user, active=True)
    _own_thread(ctx, cmd.user, cmd.thread, "thread")
    ctx.record(cmd.record)
    cls = ev.ThreadLinked if isinstance(cmd, c.LinkThread) else ev.ThreadUnlinked
    return [ctx.event(cls, user=cmd.user, thread=cmd.thread, record=cmd.record)]


def mark_threads(ctx: Context, cmd: c.MarkThreadShared | c.MarkThreadPrivate
                 ) -> list[ev.DomainEvent]:
    """V1: the owner's per-thread flag, single or bulk."""
    ctx.user(cmd.user, active=True)
    for i, t in enumerate(cmd.threads):
        _own_thread(ctx, cmd.user, t, f"threads.{i}")
    return [ctx.event(ev.ThreadMarked, user=cmd.user, threads=list(dict.fromkeys(cmd.threads)),
                      shared=isinstance(cmd, c.MarkThreadShared))]
