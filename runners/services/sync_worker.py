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

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import ValidationError

from adapters.deliveries.work_queue import Delivery
from adapters.errors import (
    CredentialsRejected,
    CursorExpired,
    MailboxGone,
    MalformedWebhook,
)
from adapters.metrics import prometheus as metrics
from adapters.providers.sources import Changes, MailSource, PushTarget
from domain import commands as c
from domain import events as ev
from domain.input_rules import safe_name
from domain.mail import skip_reason
from domain.state import Mailbox, Push, TenantState
from runners.services.engine import Engine
from runners.services.mail_directory import (
    DELIVERY_PROVIDERS,
    Directory,
    MailboxRef,
    Unroutable,
    delivery_address,
    delivery_lifecycle,
    delivery_subscription,
)

log = structlog.get_logger("crmsync.sync")

ACTOR = "system:sync"


class SourceFactory(Protocol):
    def open(self, tenant: str, mailbox: Mailbox) -> MailSource | None:
        """The mailbox's provider client; None when its credentials are missing."""
        ...


class MailboxLocks(Protocol):
    def hold(self, tenant: str, mailbox: str) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class ThreadLocks:
    """One process (tests, embedded mode with one worker): a lock per mailbox."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def hold(self, tenant: str, mailbox: str) -> AbstractContextManager[None]:
        with self._guard:
            lock = self._locks.setdefault((tenant, mailbox), threading.Lock())
        return _Locked(lock)

    def close(self) -> None:
        pass


class _Locked(AbstractContextManager[None]):
    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@dataclass
class Outcome:
    """What one delivery or catch-up did."""

    mailboxes: list[MailboxRef] = field(default_factory=list)
    events: int = 0
    synced: int = 0
    skipped_delivery: bool = False
    resynced: bool = False
    gone: bool = False
    note: str | None = None
    push: str | None = None  # created | renewed | ended (the last push channel change)

    def add(self, other: Outcome) -> None:
        self.mailboxes += [r for r in other.mailboxes if r not in self.mailboxes]
        self.events += other.events
        self.synced += other.synced
        self.skipped_delivery |= other.skipped_delivery
        self.resynced |= other.resynced
        self.gone |= other.gone
        self.note = other.note or self.note
        self.push = other.push or self.push


@dataclass(frozen=True)
class PushSettings:
    """Where providers are to send notifications (from configuration). Graph needs the public
    base URL of the webhook receiver (notifications and lifecycle notifications go to
    `<public_url>/webhooks/graph`) and the clientState the receiver checks; Gmail needs the
    Cloud Pub/Sub topic (whose push subscription points at `<public_url>/webhooks/gmail`). A
    provider without its part gets no push channels (its mailboxes sync on catch-up only)."""

    public_url: str | None = None
    client_state: str | None = None
    gmail_topic: str | None = None
    graph_lifetime: timedelta = timedelta(minutes=4230)  # asked of Graph (its limit: 10,080)

    def __post_init__(self) -> None:
        from adapters.providers.graph.client import MAX_MESSAGE_SUBSCRIPTION

        if not timedelta(minutes=45) <= self.graph_lifetime <= MAX_MESSAGE_SUBSCRIPTION:
            raise ValueError("graph_lifetime must lie between 45 minutes and Graph's limit for "
                             f"messages ({MAX_MESSAGE_SUBSCRIPTION})")

    def __repr__(self) -> str:  # the clientState is a secret
        return (f"PushSettings(public_url={self.public_url!r}, gmail_topic={self.gmail_topic!r},"
                f" graph_lifetime={self.graph_lifetime!r})")

    @property
    def providers(self) -> list[str]:
        return [p for p in ("gmail", "outlook") if self.enabled(p)]

    def enabled(self, provider: str) -> bool:
        if provider == "outlook":
            return bool(self.public_url and self.client_state)
        return provider == "gmail" and bool(self.gmail_topic)

    def target(self, mbx: Mailbox, now: datetime) -> PushTarget:
        labels = tuple(mbx.scope.get("labels") or ()) if mbx.scope.get("mode") == "labels" \
            else ()
        url = f"{self.public_url.rstrip('/')}/webhooks/graph" if self.public_url else None
        return PushTarget(expires_at=now + self.graph_lifetime, notification_url=url,
                          client_state=self.client_state, topic=self.gmail_topic, labels=labels)


def push_due(state: TenantState, mbx: Mailbox, now: datetime) -> str | None:
    """Why the mailbox's push channel needs work now, if it does: `missing`, `expired`,
    `address_changed` (S9: it watches the old address), `scope_changed` (a Gmail watch on the
    labels of an earlier scope) — a new one; `expiring` (past half its
    lifetime) — a renewal. None for mailboxes that do not sync (L1, S10, L4)."""
    if skip_reason(state, mbx) is not None:
        return None
    push: Push | None = mbx.push
    if push is None:
        return "missing"
    if push.expires_at <= now:
        return "expired"
    if push.address != mbx.address:
        return "address_changed"
    if mbx.provider == "gmail" and push.scope is not None and push.scope != mbx.scope:
        return "scope_changed"  # S1: a Gmail watch filters on the scope's labels
    if now >= push.issued_at + (push.expires_at - push.issued_at) / 2:
        return "expiring"
    return None


def _cursor_covers(cursor: str | None, history_id: int | None) -> bool:
    """A Gmail cursor (a history id at a round's end) at or past the watch's start history id:
    nothing happened in between, no catch-up needed."""
    return cursor is not None and cursor.isdigit() and history_id is not None \
        and int(cursor) >= history_id


class SyncWorker:
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
        provider = DELIVERY_PROVIDERS.get(delivery.provider)
        if provider is None:
            raise MalformedWebhook("provider", f"unknown provider {delivery.provider!r}")
        lifecycle = delivery_lifecycle(delivery.provider, delivery.payload)
        if lifecycle is not None:
            return self.lifecycle(delivery, *lifecycle)
        subscription = delivery_subscription(delivery.provider, delivery.payload)
        if subscription in self.directory.subscriptions:
            refs = [self.directory.subscriptions[subscription]]
        else:
            try:
                address = delivery_address(delivery.provider, delivery.payload)
            except Unroutable as exc:
                log.warning("delivery_unroutable", delivery_id=delivery.delivery_id,
                            reason=str(exc))
                return Outcome(note="unroutable")
            refs = self.directory.route(provider, address) if address else []
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

    def route_of(self, delivery: Delivery) -> MailboxRef | None:
        """The first mailbox a delivery names, if any (for dead-letter records)."""
        provider = DELIVERY_PROVIDERS.get(delivery.provider)
        try:
            subscription = delivery_subscription(delivery.provider, delivery.payload)
            if subscription in self.directory.subscriptions:
                return self.directory.subscriptions[subscription]
            address = delivery_address(delivery.provider, delivery.payload)
        except (MalformedWebhook, Unroutable):
            return None
        refs = self.directory.route(provider, address) if provider and address else []
        return refs[0] if refs else None

    # -- catch-up and polling ---------------------------------------------------------------------
    def catch_up(self) -> list[Outcome]:
        """Sync the mailboxes the log says need it (first sync, reactivation, reconnection);
        a failed one is tried again 30 s later."""
        self.directory.follow(self.engine)
        now = time.monotonic()
        due = [r for r, t in self.retry_pending.items() if t <= now]
        for ref in due:
            del self.retry_pending[ref]
        out = []
        for ref in dict.fromkeys([*self.directory.take_pending(), *due]):
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

    # -- push channels ----------------------------------------------------------------------------
    def maintain_push(self) -> list[Outcome]:
        """The periodic tick: every syncing mailbox of a configured provider gets a push channel
        if it has none (or it expired, or watches an old address), and one past half its
        lifetime is renewed. A failure is logged and tried again at the next tick."""
        if self.push is None:
            return []
        self.directory.follow(self.engine)
        now = self.clock()
        states: dict[str, TenantState] = {}
        out = []
        for ref, known in sorted(self.directory.mailboxes.items(),
                                 key=lambda item: (item[0].tenant, item[0].mailbox)):
            if not self.push.enabled(known.provider):
                continue
            if ref.tenant not in states:
                states[ref.tenant] = self.engine.state(ref.tenant)
            mbx = states[ref.tenant].mailboxes.get(ref.mailbox)
            if mbx is None or not mbx.credentials_set or \
                    push_due(states[ref.tenant], mbx, now) is None:
                continue
            try:
                out.append(self.push_mailbox(ref, None))
            except Exception as exc:
                log.warning("push_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=describe(exc))
        return out

    def push_mailbox(self, ref: MailboxRef, trigger: str | None, *,
                     subscription: str | None = None, delivery_id: str | None = None
                     ) -> Outcome:
        """Create or renew the mailbox's push channel under its lock and record it. `trigger`
        None: whatever `push_due` says now; `reauthorization_required` / `subscription_removed`:
        a lifecycle notification of `subscription` (ignored unless it is the current one). A
        channel created for a mailbox that has a cursor is followed by a catch-up sync."""
        out = Outcome(mailboxes=[ref])
        catch_up = False
        with self.locks.hold(ref.tenant, ref.mailbox):
            state = self.engine.state(ref.tenant)
            mbx = state.mailboxes.get(ref.mailbox)
            if mbx is None:
                return out
            now = self.clock()
            current = mbx.push
            if trigger is None:
                trigger = push_due(state, mbx, now)
                if trigger is None:
                    return out  # another worker did it meanwhile
            elif current is None or current.subscription_id != subscription:
                log.info("push_stale_subscription", tenant=ref.tenant, mailbox=ref.mailbox,
                         subscription_id=subscription)
                out.note = "stale_subscription"
                return out
            if trigger == "subscription_removed":
                out.events += self._apply(ref.tenant, [_cmd(
                    c.RecordPushSubscription, ref, action="ended", subscription_id=subscription,
                    reason="removed_by_provider")])
                out.push, current = "ended", None
            paused = skip_reason(state, mbx)
            if paused is not None:
                out.note = f"push_paused: {paused}"
                return out
            if self.push is None or not self.push.enabled(mbx.provider):
                out.note = "push_not_configured"
                return out
            source = self._source(ref, mbx, out)
            if source is None:
                return out
            try:
                catch_up = self._push_channel(ref, mbx, source, trigger, current, now, out)
            except MailboxGone as exc:
                log.warning("mailbox_gone", tenant=ref.tenant, mailbox=ref.mailbox,
                            reason=exc.reason)
                out.events += self._apply(ref.tenant, [_cmd(c.ReportMailboxGone, ref)])
                out.gone = True
            finally:
                source.close()
        if catch_up:  # what arrived while the mailbox had no channel
            out.add(self.sync_mailbox(ref, delivery_id))
        return out

    def _push_channel(self, ref: MailboxRef, mbx: Mailbox, source: MailSource, trigger: str,
                      current: Push | None, now: datetime, out: Outcome) -> bool:
        """Talk to the provider and record the outcome; True when a catch-up should follow."""
        channel = source.push
        if channel is None or self.push is None:
            return False
        target = self.push.target(mbx, now)
        if current is not None and trigger in ("expiring", "reauthorization_required"):
            renewed = channel.renew(mbx.address, current.subscription_id, target)
            if renewed is not None:
                out.events += self._apply(ref.tenant, [_cmd(
                    c.RecordPushSubscription, ref, action="renewed", reason=trigger,
                    subscription_id=renewed.id, expires_at=renewed.expires_at)])
                out.push = "renewed"
                log.info("push_renewed", tenant=ref.tenant, mailbox=ref.mailbox,
                         subscription_id=renewed.id, expires_at=renewed.expires_at.isoformat(),
                         reason=trigger)
                return False
            trigger = "renewal_refused"
        created = channel.subscribe(mbx.address, target)
        out.events += self._apply(ref.tenant, [_cmd(
            c.RecordPushSubscription, ref, action="created", reason=trigger,
            subscription_id=created.id, resource=created.resource[:2048] or "-",
            expires_at=created.expires_at)])
        out.push = "created"
        log.info("push_created", tenant=ref.tenant, mailbox=ref.mailbox,
                 subscription_id=created.id, expires_at=created.expires_at.isoformat(),
                 reason=trigger)
        if current is not None and trigger == "address_changed" and current.expires_at > now:
            try:  # the old channel watches the old address: stop it (best effort)
                channel.unsubscribe(current.address, current.subscription_id)
            except Exception as exc:
                log.warning("push_unsubscribe_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            subscription_id=current.subscription_id, error=describe(exc))
        return mbx.cursor is not None and not _cursor_covers(mbx.cursor, created.history_id)

    def poll(self, provider: str = "imap") -> list[Outcome]:
        """Sync every mailbox of `provider` (IMAP: there are no webhooks)."""
        self.directory.follow(self.engine)
        out = []
        for ref in self.directory.of_provider(provider):
            try:
                out.append(self.sync_mailbox(ref, None))
            except Exception as exc:
                metrics.provider_failed(provider, exc)
                log.warning("poll_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=describe(exc))
        return out

    # -- one mailbox ------------------------------------------------------------------------------
    def sync_mailbox(self, ref: MailboxRef, delivery_id: str | None) -> Outcome:
        with self.locks.hold(ref.tenant, ref.mailbox):
            state = self.engine.state(ref.tenant)
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
                    self._resync(ref, mbx, source, "first_sync", delivery_id, out)
                else:
                    self._follow(ref, mbx, source, mbx.cursor, delivery_id, out)
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

    def _follow(self, ref: MailboxRef, mbx: Mailbox, source: MailSource, cursor: str,
                delivery_id: str | None, out: Outcome) -> None:
        while True:
            try:
                changes = source.changes(mbx.address, cursor)
            except CursorExpired as exc:
                log.info("cursor_expired", tenant=ref.tenant, mailbox=ref.mailbox,
                         reason=exc.reason)
                self._resync(ref, mbx, source, "cursor_expired", delivery_id, out)
                return
            state = self.engine.state(ref.tenant)
            commands = self._change_commands(state, ref, changes)
            out.synced += sum(isinstance(x, c.SyncMessage) for x in commands)
            commands.append(c.AdvanceMailboxCursor(
                cmd="AdvanceMailboxCursor", tenant=ref.tenant, actor=ACTOR, mailbox=ref.mailbox,
                cursor=changes.new_cursor, delivery_id=delivery_id))
            out.events += self._apply(ref.tenant, commands)
            cursor = changes.new_cursor
            if not changes.more:
                return

    def _change_commands(self, state: TenantState, ref: MailboxRef, changes: Changes
                         ) -> list[c.Command]:
        out: list[c.Command] = []
        new = []
        for m in changes.messages:
            known = state.messages.get((ref.mailbox, m.id))
            if known is None:
                new.append(m)
            elif not known.deleted and (tuple(m.labels) != known.labels or m.read != known.read):
                out.append(_cmd(c.UpdateMessage, ref, id=m.id, labels=list(m.labels),
                                read=m.read))
        new.sort(key=lambda m: m.sent_at)  # parents before replies (S13)
        out[:0] = _sync_commands(ref, new)
        for u in changes.updates:
            known = state.messages.get((ref.mailbox, u.id))
            if known is None or known.deleted:
                continue
            if (u.read is not None and u.read != known.read) or \
                    (u.labels is not None and tuple(u.labels) != known.labels):
                out.append(_cmd(c.UpdateMessage, ref, id=u.id, labels=u.labels, read=u.read))
        deleted = [i for i in changes.deleted_ids
                   if (k := state.messages.get((ref.mailbox, i))) is not None and not k.deleted]
        if deleted:  # one batch for the L5 guard
            out.append(_cmd(c.DeleteMessagesAtProvider, ref, ids=deleted))
        return out

    def _resync(self, ref: MailboxRef, mbx: Mailbox, source: MailSource, reason: str,
                delivery_id: str | None, out: Outcome) -> None:
        started = self._apply_events(ref.tenant, [c.ResyncMailbox(
            cmd="ResyncMailbox", tenant=ref.tenant, actor=ACTOR, mailbox=ref.mailbox,
            reason=reason)])  # type: ignore[arg-type]
        out.events += len(started)
        since = next((e.since for e in started if isinstance(e, ev.MailboxResyncStarted)), None)
        if since is None:
            return  # rejected (recorded): the mailbox cannot resync now
        out.resynced = True
        for page in source.resync(mbx.address, since):
            state = self.engine.state(ref.tenant)
            fresh = [m for m in page.messages if (ref.mailbox, m.id) not in state.messages]
            # Newest batches first (S2, L3); inside a batch oldest first, so replies find their
            # parents (S13).
            for chunk in _chunks(fresh, self.batch_size):
                chunk.sort(key=lambda m: m.sent_at)
                commands: list[c.Command] = list(_sync_commands(ref, chunk))
                out.synced += len(commands)
                out.events += self._apply(ref.tenant, commands)
            if page.cursor is not None:
                out.events += self._apply(ref.tenant, [_cmd(
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


C = TypeVar("C", bound=c.Command)


def _cmd(cls: type[C], ref: MailboxRef, **fields: Any) -> C:
    """A sync command for `ref`'s mailbox, issued by the sync service."""
    return cls.model_validate({"cmd": cls.__name__, "tenant": ref.tenant, "actor": ACTOR,
                               "mailbox": ref.mailbox, **fields})


def _sync_commands(ref: MailboxRef, messages: Sequence[c.MailMessage]) -> list[c.SyncMessage]:
    """SyncMessage commands for provider messages; a message that cannot be stored (E8: NUL
    or control characters, absurd sizes) is skipped and logged with the field named, and the
    others go on (the cursor advances past it: the provider sends it again only if it
    changes)."""
    out = []
    for m in messages:
        try:
            out.append(_cmd(c.SyncMessage, ref, message=m))
        except ValidationError as exc:
            field, reason = c.describe(exc)
            log.warning("message_refused", tenant=ref.tenant, mailbox=ref.mailbox,
                        id=safe_name(m.id, 200) or "?", field=field, reason=reason)
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
