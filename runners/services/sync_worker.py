"""`crmsync run sync`: mailbox sync workers (issue #4).

A delivery (Gmail push, Graph change notification) is only a "something changed" signal: the
worker routes it to the mailbox(es) it names, takes that mailbox's lock (one worker per mailbox
at a time, across processes), reads the stored cursor from the tenant's state and asks the
provider for the changes since it. SyncMessage / UpdateMessage / DeleteMessagesAtProvider and
the AdvanceMailboxCursor of a page are appended in batches (one transaction per batch, the cursor
in the page's last batch), and only then is the delivery acknowledged. Killed at any point, the
delivery comes again and the worker starts from the cursor that is stored: messages it had
already appended are one message by S14.

- Expired cursor -> ResyncMailbox + the backfill window (S2), newest batches first, deleting
  nothing (L3, L4). Gone mailbox -> ReportMailboxGone (L4).
- A delivery for a deactivated user's (or a disconnected/gone) mailbox is recorded as skipped
  without asking the provider (AdvanceMailboxCursor -> DeliverySkipped; the cursor stays, L1).
- The worker follows the event log: MailboxConnected (first sync), UserReactivated and
  MailboxReconnected (catch-up from the cursor, L3/S10) queue a sync of those mailboxes.
- IMAP has no webhooks: IMAP mailboxes are polled every `imap_interval` seconds.
- Push channels (when configured, `PushSettings`): every `push_interval` the worker creates a
  Graph subscription / Gmail watch for a syncing mailbox that has none (or whose one expired or
  watches an old address), and renews one past half its lifetime; each is recorded as an event
  (RecordPushSubscription). After a (re)creation the mailbox catches up from its cursor (what
  arrived without a channel). Graph lifecycle notifications name only their subscription id and
  are routed by it: `missed` -> catch-up from the cursor, `reauthorizationRequired` -> renewal,
  `subscriptionRemoved` -> a new subscription and a catch-up. Change notifications are routed by
  subscription id too, else by the address in their resource.
- A provider 401 renews the OAuth token once (the source's token callable, see
  `adapters.providers.oauth`); credentials that cannot be renewed (`CredentialsRejected`) fail the
  delivery at once (dead-lettered with the reason: reconnect the mailbox), without retries.
- Failures are retried with backoff; after `max_attempts` the delivery goes to the dead-letter
  queue and a `DeliveryDeadLettered` event is recorded (when its tenant is known).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from adapters.deliveries.model import GmailPush, GraphChange, GraphLifecycle, Undecodable
from adapters.deliveries.work_queue import Delivery
from adapters.errors import (
    CredentialsRejected,
    CursorExpired,
    MailboxGone,
)
from adapters.metrics import prometheus as metrics
from adapters.providers.sources import Changes, MailSource
from domain import commands as c
from domain import events as ev
from domain.errors import MailboxNotLoaded
from domain.input_rules import safe_name
from domain.mail import skip_reason
from domain.state import Mailbox, TenantState
from runners.services.engine import Engine
from runners.services.mail_directory import (
    Directory,
    MailboxRef,
    Unroutable,
)
from runners.services.push_channels import PushChannels, PushSettings
from runners.services.sync_common import (
    ACTOR,
    MailboxLocks,
    Outcome,
    ThreadLocks,
    describe,
    sync_command,
)

log = structlog.get_logger("crmsync.sync")


class SourceFactory(Protocol):
    def open(self, tenant: str, mailbox: Mailbox) -> MailSource | None:
        """The mailbox's provider client; None when its credentials are missing."""
        ...


class SyncWorker(PushChannels):
    def __init__(self, engine: Engine, sources: SourceFactory, locks: MailboxLocks | None = None,
                 *, batch_size: int = 500,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 push: PushSettings | None = None) -> None:
        self.engine, self.sources = engine, sources
        self.locks: MailboxLocks = locks or ThreadLocks()
        self.batch_size, self.clock = batch_size, clock
        self.push = push
        self.directory = Directory()
        self.retry_pending: dict[MailboxRef, float] = {}
        # the tenants this worker syncs without a delivery (catch-up, IMAP, push channels):
        # all of them, unless tenant affinity (runners.services.affinity) says otherwise
        self.owns: Callable[[str], bool] = lambda tenant: True

    def _source(self, ref: MailboxRef, mbx: Mailbox, out: Outcome) -> MailSource | None:
        """The mailbox's provider source; None (noted, logged) when its credentials are missing."""
        source = self.sources.open(ref.tenant, mbx)
        if source is None:
            log.warning("credentials_missing", tenant=ref.tenant, mailbox=ref.mailbox)
            out.note = "credentials_missing"
        return source

    # -- deliveries -------------------------------------------------------------------------------
    def handle(self, delivery: Delivery) -> Outcome:
        """Process one delivery; raises on a failure worth retrying (provider, store)."""
        self.directory.follow(self.engine)
        notice = delivery.notice
        if isinstance(notice, Undecodable):  # an unknown provider too: dead-lettered at once
            raise notice.error()
        if isinstance(notice, GraphLifecycle):
            return self.lifecycle(delivery, notice.subscription_id, notice.lifecycle_event)
        try:
            refs = self._named_by(delivery, notice)
        except Unroutable as exc:
            log.warning("delivery_unroutable", delivery_id=delivery.delivery_id,
                        reason=str(exc))
            return Outcome(note="unroutable")
        if not refs:
            log.warning("delivery_unknown_mailbox", provider=delivery.provider,
                        delivery_id=delivery.delivery_id)
            return Outcome(note="unknown_mailbox")
        total = Outcome()
        for ref in refs:
            total.add(self.sync_mailbox(ref, delivery.delivery_id))
        return total

    def lifecycle(self, delivery: Delivery, subscription: str, event: str) -> Outcome:
        """A Graph lifecycle notification, routed by its subscription id: `missed` -> catch up
        from the cursor; `reauthorizationRequired` -> renew; `subscriptionRemoved` -> record
        the end, create a new subscription and catch up. An unknown subscription id is logged
        and acknowledged like an unknown mailbox."""
        ref = self.directory.subscriptions.get(subscription)
        if ref is None:
            log.warning("delivery_unknown_subscription", provider=delivery.provider,
                        delivery_id=delivery.delivery_id, subscription_id=subscription,
                        lifecycle_event=event)
            return Outcome(note="unknown_subscription")
        log.info("delivery_lifecycle", delivery_id=delivery.delivery_id, tenant=ref.tenant,
                 mailbox=ref.mailbox, subscription_id=subscription, lifecycle_event=event)
        if event == "missed":
            out = self.sync_mailbox(ref, delivery.delivery_id)
            out.note = out.note or "missed"
            return out
        trigger = "reauthorization_required" if event == "reauthorizationRequired" \
            else "subscription_removed"
        return self.push_mailbox(ref, trigger, subscription=subscription,
                                 delivery_id=delivery.delivery_id)

    def _named_by(self, delivery: Delivery, notice: GmailPush | GraphChange
                  ) -> list[MailboxRef]:
        """The mailboxes a delivery names; of its tenant only when it was forwarded to the
        tenant's partition (an address in two tenants makes one copy per tenant)."""
        refs = self.directory.named_by(notice)
        if delivery.tenant is None:
            return refs
        return [r for r in refs if r.tenant == delivery.tenant]

    def route_of(self, delivery: Delivery) -> MailboxRef | None:
        """The first mailbox a delivery names, if any (for dead-letter records)."""
        notice = delivery.notice
        if isinstance(notice, Undecodable):
            return None
        if isinstance(notice, GraphLifecycle):
            return self.directory.subscriptions.get(notice.subscription_id)
        try:
            refs = self._named_by(delivery, notice)
        except Unroutable:
            return None
        return refs[0] if refs else None

    def tenants_of(self, delivery: Delivery) -> list[str]:
        """The tenants of the mailboxes a delivery names, as the directory knows them now
        (the caller follows the log first); [] when it names none or cannot be read."""
        notice = delivery.notice
        if isinstance(notice, Undecodable):
            return []
        if isinstance(notice, GraphLifecycle):
            ref = self.directory.subscriptions.get(notice.subscription_id)
            return [ref.tenant] if ref else []
        try:
            return sorted({r.tenant for r in self.directory.named_by(notice)})
        except Unroutable:
            return []

    # -- catch-up and polling ---------------------------------------------------------------------
    def catch_up(self) -> list[Outcome]:
        """Sync the mailboxes the log says need it (first sync, reactivation, reconnection);
        a failed one is tried again 30 s later."""
        self.directory.follow(self.engine)
        now = time.monotonic()
        due = [r for r, t in self.retry_pending.items() if t <= now and self.owns(r.tenant)]
        for ref in due:
            del self.retry_pending[ref]
        out = []
        for ref in dict.fromkeys([*self.directory.take_pending(self.owns), *due]):
            try:
                out.append(self.sync_mailbox(ref, None))
            except Exception as exc:
                metrics.provider_failed("other", exc)
                log.warning("catch_up_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=describe(exc))
                # credentials that were refused wait for a reconnection, not 30 s
                later = 900.0 if isinstance(exc, CredentialsRejected) else 30.0
                self.retry_pending[ref] = now + later
        return out


    def poll(self, provider: str = "imap") -> list[Outcome]:
        """Sync every mailbox of `provider` (IMAP: there are no webhooks)."""
        self.directory.follow(self.engine)
        out = []
        for ref in self.directory.of_provider(provider):
            if not self.owns(ref.tenant):
                continue
            try:
                out.append(self.sync_mailbox(ref, None))
            except Exception as exc:
                metrics.provider_failed(provider, exc)
                log.warning("poll_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=describe(exc))
        return out

    # -- one mailbox ------------------------------------------------------------------------------
    def sync_mailbox(self, ref: MailboxRef, delivery_id: str | None) -> Outcome:
        """The mailbox's changes since its cursor, applied. Reads the tenant's state with this
        mailbox folded and the others perhaps not (#15: a worker's first delivery after a start
        folds one mailbox, not the tenant's mail). Should a read ever reach another mailbox,
        the delivery runs again on the whole state, as a redelivery would (nothing twice: S14,
        E5)."""
        try:
            return self._sync_mailbox(ref, delivery_id,
                                      lambda: self.engine.state_with(ref.tenant, ref.mailbox))
        except MailboxNotLoaded as missing:
            log.warning("sync_read_another_mailbox", tenant=ref.tenant, mailbox=ref.mailbox,
                        wanted=sorted(missing.mailboxes))
            return self._sync_mailbox(ref, delivery_id, lambda: self.engine.state(ref.tenant))

    def _sync_mailbox(self, ref: MailboxRef, delivery_id: str | None,
                      read: Callable[[], TenantState]) -> Outcome:
        with self.locks.hold(ref.tenant, ref.mailbox):
            state = read()
            mbx = state.mailboxes.get(ref.mailbox)
            out = Outcome(mailboxes=[ref])
            if mbx is None:
                return out
            reason = skip_reason(state, mbx)
            if reason is not None:
                if delivery_id is not None:  # L1: recorded, not fetched; the cursor stays
                    out.events += self._apply(ref.tenant, [c.AdvanceMailboxCursor(
                        cmd="AdvanceMailboxCursor", tenant=ref.tenant, actor=ACTOR,
                        mailbox=ref.mailbox, cursor=mbx.cursor or "-",
                        delivery_id=delivery_id)])
                    out.skipped_delivery = True
                return out
            source = self._source(ref, mbx, out)
            if source is None:
                return out
            try:
                if mbx.cursor is None:
                    self._resync(ref, mbx, source, "first_sync", delivery_id, out, read)
                else:
                    self._follow(ref, state, source, mbx.cursor, delivery_id, out, read)
            except MailboxGone as exc:
                log.warning("mailbox_gone", tenant=ref.tenant, mailbox=ref.mailbox,
                            reason=exc.reason)
                out.events += self._apply(ref.tenant, [c.ReportMailboxGone(
                    cmd="ReportMailboxGone", tenant=ref.tenant, actor=ACTOR,
                    mailbox=ref.mailbox)])
                out.gone = True
            finally:
                source.close()
            return out

    def _follow(self, ref: MailboxRef, state: TenantState, source: MailSource, cursor: str,
                delivery_id: str | None, out: Outcome, read: Callable[[], TenantState]
                ) -> None:
        """Page after page from `cursor`. The first page is compared with `state`, read under
        the mailbox's lock: only this worker adds this mailbox's messages meanwhile, and the
        batch is decided on the tenant's latest state anyway (S14 makes a message synced twice
        one), so reading the log again between the provider's answer and the batch was a round
        trip per delivery for nothing (issue #15). Later pages compare with the state the
        batches left."""
        mbx = state.mailboxes[ref.mailbox]
        while True:
            try:
                changes = source.changes(mbx.address, cursor)
            except CursorExpired as exc:
                log.info("cursor_expired", tenant=ref.tenant, mailbox=ref.mailbox,
                         reason=exc.reason)
                self._resync(ref, mbx, source, "cursor_expired", delivery_id, out, read)
                return
            commands = self._change_commands(state, ref, changes)
            out.synced += sum(isinstance(x, c.SyncMessage) for x in commands)
            commands.append(c.AdvanceMailboxCursor(
                cmd="AdvanceMailboxCursor", tenant=ref.tenant, actor=ACTOR, mailbox=ref.mailbox,
                cursor=changes.new_cursor, delivery_id=delivery_id))
            out.events += self._apply(ref.tenant, commands)
            cursor = changes.new_cursor
            if not changes.more:
                return
            state = read()

    def _change_commands(self, state: TenantState, ref: MailboxRef, changes: Changes
                         ) -> list[c.Command]:
        out: list[c.Command] = []
        new = []
        for m in changes.messages:
            known = state.messages.get((ref.mailbox, m.id))
            if known is None:
                new.append(m)
            elif not known.deleted and (tuple(m.labels) != known.labels or m.read != known.read):
                out.append(sync_command(c.UpdateMessage, ref, id=m.id, labels=list(m.labels),
                                read=m.read))
        new.sort(key=lambda m: m.sent_at)  # parents before replies (S13)
        out[:0] = _sync_commands(ref, new)
        for u in changes.updates:
            known = state.messages.get((ref.mailbox, u.id))
            if known is None or known.deleted:
                continue
            if (u.read is not None and u.read != known.read) or \
                    (u.labels is not None and tuple(u.labels) != known.labels):
                out.append(sync_command(c.UpdateMessage, ref, id=u.id, labels=u.labels,
                                        read=u.read))
        deleted = [i for i in changes.deleted_ids
                   if (k := state.messages.get((ref.mailbox, i))) is not None and not k.deleted]
        if deleted:  # one batch for the L5 guard
            out.append(sync_command(c.DeleteMessagesAtProvider, ref, ids=deleted))
        return out

    def _resync(self, ref: MailboxRef, mbx: Mailbox, source: MailSource, reason: str,
                delivery_id: str | None, out: Outcome, read: Callable[[], TenantState]
                ) -> None:
        started = self._apply_events(ref.tenant, [c.ResyncMailbox(
            cmd="ResyncMailbox", tenant=ref.tenant, actor=ACTOR, mailbox=ref.mailbox,
            reason=reason)])  # type: ignore[arg-type]
        out.events += len(started)
        since = next((e.since for e in started if isinstance(e, ev.MailboxResyncStarted)), None)
        if since is None:
            return  # rejected (recorded): the mailbox cannot resync now
        out.resynced = True
        for page in source.resync(mbx.address, since):
            state = read()
            fresh = [m for m in page.messages if (ref.mailbox, m.id) not in state.messages]
            # Newest batches first (S2, L3); inside a batch oldest first, so replies find their
            # parents (S13).
            for chunk in _chunks(fresh, self.batch_size):
                chunk.sort(key=lambda m: m.sent_at)
                commands: list[c.Command] = list(_sync_commands(ref, chunk))
                out.synced += len(commands)
                out.events += self._apply(ref.tenant, commands)
            if page.cursor is not None:
                out.events += self._apply(ref.tenant, [sync_command(
                    c.AdvanceMailboxCursor, ref, cursor=page.cursor, delivery_id=delivery_id)])

    # -- appending --------------------------------------------------------------------------------
    def _apply(self, tenant: str, commands: Sequence[c.Command]) -> int:
        return len(self._apply_events(tenant, commands))

    def _apply_events(self, tenant: str, commands: Sequence[c.Command]) -> list[ev.DomainEvent]:
        """Append in batches of `batch_size` commands, one transaction each, in order."""
        out: list[ev.DomainEvent] = []
        for chunk in _chunks(list(commands), self.batch_size):
            results = self.engine.execute_batch(chunk, now=self.clock(),
                                                correlation_id=f"sync:{uuid.uuid4()}")
            out += [e for r in results for e in r]
        return out

    def record_dead_letter(self, delivery: Delivery, dead_letter_id: str, error: str) -> bool:
        """The audit record of a dead letter, in the tenant of the mailbox it names (idempotent
        per dead letter). False when no tenant is known (kept in the queue and logged only)."""
        ref = self.route_of(delivery)
        if ref is None:
            return False
        self.engine.execute_batch([c.RecordDeadLetter(
            cmd="RecordDeadLetter", tenant=ref.tenant, actor=ACTOR,
            command_id=f"deadletter:{dead_letter_id}", dead_letter_id=dead_letter_id,
            provider=delivery.provider, delivery_id=delivery.delivery_id, mailbox=ref.mailbox,
            attempts=delivery.attempts, error=error[:2000])], now=self.clock(),
            correlation_id=f"sync:{uuid.uuid4()}")
        return True



def _sync_commands(ref: MailboxRef, messages: Sequence[c.MailMessage]) -> list[c.SyncMessage]:
    """SyncMessage commands for provider messages; a message that cannot be stored (E8: NUL
    or control characters, absurd sizes) is skipped and logged with the field named, and the
    others go on (the cursor advances past it: the provider sends it again only if it
    changes)."""
    out = []
    for m in messages:
        try:
            out.append(sync_command(c.SyncMessage, ref, message=m))
        except ValidationError as exc:
            field, reason = c.describe(exc)
            log.warning("message_refused", tenant=ref.tenant, mailbox=ref.mailbox,
                        id=safe_name(m.id, 200) or "?", field=field, reason=reason)
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]
