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
- Failures are retried with backoff; after `max_attempts` the delivery goes to the dead-letter
  queue and a `DeliveryDeadLettered` event is recorded (when its tenant is known).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
import structlog

from adapters.errors import CursorExpired, MailboxGone, MalformedWebhook, ProviderThrottled
from adapters.mail_sources import Changes, MailSource
from adapters.work_queue import Delivery, WorkQueue
from domain import commands as c
from domain import events as ev
from domain.mail import skip_reason
from domain.state import Mailbox, TenantState
from runners.engine import Engine

log = structlog.get_logger("crmsync.sync")

# webhook provider -> the domain's mailbox provider
DELIVERY_PROVIDERS = {"gmail": "gmail", "graph": "outlook"}
ACTOR = "system:sync"
_GRAPH_USER = re.compile(r"^/?users(?:\('([^']+)'\)|/([^/]+))", re.IGNORECASE)


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


@dataclass(frozen=True)
class MailboxRef:
    tenant: str
    mailbox: str


@dataclass
class _Known:
    provider: str
    address: str
    user: str


@dataclass
class Directory:
    """Which mailboxes exist (all tenants), folded from the event log, and which need a sync
    without a delivery: first sync after MailboxConnected, catch-up after UserReactivated and
    MailboxReconnected (L3, S10), until their cursor next moves."""

    position: int = 0
    mailboxes: dict[MailboxRef, _Known] = field(default_factory=dict)
    pending: set[MailboxRef] = field(default_factory=set)

    def fold(self, tenant: str, e: ev.DomainEvent) -> None:
        if isinstance(e, ev.MailboxConnected):
            ref = MailboxRef(tenant, e.mailbox)
            self.mailboxes[ref] = _Known(e.provider, e.address.lower(), e.user)
            self.pending.add(ref)
        elif isinstance(e, ev.MailboxAddressChanged):
            known = self.mailboxes.get(MailboxRef(tenant, e.mailbox))
            if known is not None:
                known.address = e.address.lower()
        elif isinstance(e, ev.MailboxReconnected):
            self.pending.add(MailboxRef(tenant, e.mailbox))
        elif isinstance(e, ev.UserReactivated):
            self.pending.update(r for r, k in self.mailboxes.items()
                                if r.tenant == tenant and k.user == e.user)
        elif isinstance(e, ev.MailboxCursorAdvanced):
            self.pending.discard(MailboxRef(tenant, e.mailbox))

    def follow(self, engine: Engine, limit: int = 10_000) -> int:
        read = 0
        while True:
            batch = engine.store.read_log(self.position, limit)
            for item in batch:
                self.fold(item.event.tenant, item.event)
                self.position = item.position
            read += len(batch)
            if len(batch) < limit:
                return read

    def route(self, provider: str, address: str) -> list[MailboxRef]:
        address = address.lower()
        return sorted((r for r, k in self.mailboxes.items()
                       if k.provider == provider and k.address == address),
                      key=lambda r: (r.tenant, r.mailbox))

    def of_provider(self, provider: str) -> list[MailboxRef]:
        return sorted((r for r, k in self.mailboxes.items() if k.provider == provider),
                      key=lambda r: (r.tenant, r.mailbox))

    def take_pending(self) -> list[MailboxRef]:
        out = sorted(self.pending, key=lambda r: (r.tenant, r.mailbox))
        self.pending.clear()
        return out


class Unroutable(Exception):
    """The delivery names no mailbox we sync (acknowledged with a log line, not retried)."""


def delivery_address(provider: str, payload: bytes) -> str | None:
    """The mailbox address a stored delivery names (Gmail `emailAddress`; Graph: the user
    segment of the notification's `resource`, `Users/{address}/Messages/{id}` — subscriptions
    are created on `/users/{address}/...`). None for Graph lifecycle notifications. Raises
    MalformedWebhook when the stored payload is not what the receiver stored."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedWebhook("body", "stored delivery is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedWebhook("body", "stored delivery is not an object")
    if provider == "gmail":
        address = data.get("email_address")
        if not isinstance(address, str) or "@" not in address:
            raise MalformedWebhook("email_address", "missing")
        return address
    if provider == "graph":
        if data.get("kind") == "lifecycle":
            return None
        resource = data.get("resource")
        if not isinstance(resource, str):
            raise MalformedWebhook("resource", "missing")
        match = _GRAPH_USER.match(resource)
        if match is None:
            raise Unroutable(f"resource names no user: {resource[:80]!r}")
        return (match.group(1) or match.group(2)).lower()
    raise MalformedWebhook("provider", f"unknown provider {provider!r}")


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


class SyncWorker:
    def __init__(self, engine: Engine, sources: SourceFactory, locks: MailboxLocks | None = None,
                 *, batch_size: int = 500,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine, self.sources = engine, sources
        self.locks: MailboxLocks = locks or ThreadLocks()
        self.batch_size, self.clock = batch_size, clock
        self.directory = Directory()
        self.retry_pending: dict[MailboxRef, float] = {}

    # -- deliveries -------------------------------------------------------------------------------
    def handle(self, delivery: Delivery) -> Outcome:
        """Process one delivery; raises on a failure worth retrying (provider, store)."""
        self.directory.follow(self.engine)
        provider = DELIVERY_PROVIDERS.get(delivery.provider)
        if provider is None:
            raise MalformedWebhook("provider", f"unknown provider {delivery.provider!r}")
        try:
            address = delivery_address(delivery.provider, delivery.payload)
        except Unroutable as exc:
            log.warning("delivery_unroutable", delivery_id=delivery.delivery_id, reason=str(exc))
            return Outcome(note="unroutable")
        if address is None:
            log.info("delivery_lifecycle_ignored", delivery_id=delivery.delivery_id)
            return Outcome(note="lifecycle")
        refs = self.directory.route(provider, address)
        if not refs:
            log.warning("delivery_unknown_mailbox", provider=delivery.provider,
                        delivery_id=delivery.delivery_id)
            return Outcome(note="unknown_mailbox")
        total = Outcome()
        for ref in refs:
            one = self.sync_mailbox(ref, delivery.delivery_id)
            total.mailboxes.append(ref)
            total.events += one.events
            total.synced += one.synced
            total.skipped_delivery |= one.skipped_delivery
            total.resynced |= one.resynced
            total.gone |= one.gone
            total.note = one.note or total.note
        return total

    def route_of(self, delivery: Delivery) -> MailboxRef | None:
        """The first mailbox a delivery names, if any (for dead-letter records)."""
        provider = DELIVERY_PROVIDERS.get(delivery.provider)
        try:
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
                log.warning("catch_up_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=_describe(exc))
                self.retry_pending[ref] = now + 30.0
        return out

    def poll(self, provider: str = "imap") -> list[Outcome]:
        """Sync every mailbox of `provider` (IMAP: there are no webhooks)."""
        self.directory.follow(self.engine)
        out = []
        for ref in self.directory.of_provider(provider):
            try:
                out.append(self.sync_mailbox(ref, None))
            except Exception as exc:
                log.warning("poll_failed", tenant=ref.tenant, mailbox=ref.mailbox,
                            error=_describe(exc))
        return out

    # -- one mailbox ------------------------------------------------------------------------------
    def sync_mailbox(self, ref: MailboxRef, delivery_id: str | None) -> Outcome:
        with self.locks.hold(ref.tenant, ref.mailbox):
            state = self.engine.store.state(ref.tenant)
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
            source = self.sources.open(ref.tenant, mbx)
            if source is None:
                log.warning("credentials_missing", tenant=ref.tenant, mailbox=ref.mailbox)
                out.note = "credentials_missing"
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
            state = self.engine.store.state(ref.tenant)
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
        out[:0] = [_cmd(c.SyncMessage, ref, message=m) for m in new]
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
            state = self.engine.store.state(ref.tenant)
            fresh = [m for m in page.messages if (ref.mailbox, m.id) not in state.messages]
            # Newest batches first (S2, L3); inside a batch oldest first, so replies find their
            # parents (S13).
            for chunk in _chunks(fresh, self.batch_size):
                chunk.sort(key=lambda m: m.sent_at)
                commands: list[c.Command] = [_cmd(c.SyncMessage, ref, message=m) for m in chunk]
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


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class LoopOptions:
    fetch: int = 20
    poll: float = 1.0  # seconds to wait for deliveries before looking at the log again
    imap_interval: float = 60.0
    max_attempts: int = 5
    backoff: float = 2.0  # retry n waits backoff * 2^(n-1) seconds, at most max_backoff
    max_backoff: float = 300.0


def retry_delay(attempts: int, options: LoopOptions) -> float:
    return float(min(options.max_backoff, options.backoff * 2 ** max(0, attempts - 1)))


async def process(worker: SyncWorker, queue: WorkQueue, delivery: Delivery,
                  options: LoopOptions) -> str:
    """One delivery: handled and acked; or retried later; or dead-lettered (recorded, acked)."""
    log.info("delivery_started", delivery_id=delivery.delivery_id, provider=delivery.provider,
             attempts=delivery.attempts)
    try:
        outcome = worker.handle(delivery)
    except Exception as exc:
        error = _describe(exc)
        permanent = isinstance(exc, MalformedWebhook)
        if not permanent and delivery.attempts < options.max_attempts:
            delay = retry_delay(delivery.attempts, options)
            if isinstance(exc, ProviderThrottled):  # the provider said how long to wait
                delay = max(delay, min(exc.retry_after, options.max_backoff))
            log.warning("delivery_retry", delivery_id=delivery.delivery_id,
                        attempts=delivery.attempts, delay=delay, error=error)
            await queue.retry(delivery, delay)
            return "retry"
        ref = worker.route_of(delivery)
        dead_id = await queue.put_dead_letter(
            delivery, tenant=ref.tenant if ref else None, mailbox=ref.mailbox if ref else None,
            error=error)
        recorded = worker.record_dead_letter(delivery, dead_id, error)
        log.error("delivery_dead_lettered", delivery_id=delivery.delivery_id,
                  dead_letter_id=dead_id, attempts=delivery.attempts, error=error,
                  recorded=recorded)
        await queue.ack(delivery)
        return "dead"
    log.info("delivery_done", delivery_id=delivery.delivery_id, events=outcome.events,
             synced=outcome.synced, skipped=outcome.skipped_delivery, note=outcome.note,
             resynced=outcome.resynced, gone=outcome.gone)
    await queue.ack(delivery)
    return "done"


async def run(worker: SyncWorker, queue: WorkQueue, stop: threading.Event,
              options: LoopOptions | None = None) -> None:
    options = options or LoopOptions()
    last_poll = float("-inf")
    log.info("sync_worker_started", imap_interval=options.imap_interval)
    while not stop.is_set():
        try:
            worker.catch_up()
            if time.monotonic() - last_poll >= options.imap_interval:
                worker.poll("imap")
                last_poll = time.monotonic()
            for delivery in await queue.fetch(options.fetch, options.poll):
                await process(worker, queue, delivery, options)
                if stop.is_set():
                    break
        except Exception as exc:  # a store or queue outage: log, wait, go on
            # Deliveries not acked come again; the cursor in the log says where sync stands.
            log.error("sync_loop_failed", error=_describe(exc))
            await asyncio.sleep(options.poll)
    log.info("sync_worker_stopped")


def run_until_signalled(worker: SyncWorker, queue: WorkQueue,
                        options: LoopOptions | None = None) -> None:
    """Run until SIGTERM or SIGINT; the delivery in hand finishes first."""
    import signal

    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

    async def main() -> None:
        try:
            await run(worker, queue, stop, options)
        finally:
            await queue.close()

    asyncio.run(main())
