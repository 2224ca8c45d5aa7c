"""`crmsync run outbox`: executes CRM-side mail changes at the provider (S7, S12).

The worker follows the event log from its durable low watermark (`adapters.tracking.outbox`) and
tracks every outbound request it reads (`EmailSent`, `MessageDeletionRequested`,
`MessageReadRequested`) until its `OutboundMailAcknowledged` is logged. Each round:

- per mailbox, only the oldest open request is tried (a send comes before the deletion of the
  same message; one failing mailbox holds up only itself);
- a send first asks the provider for a message with its RFC Message-ID (`find_sent`): after a
  crash between "provider accepted" and "ack recorded" the message is acknowledged, not sent
  again; otherwise it is sent;
- a deletion or read change targets the provider id (a CRM-sent message's from its ack, else
  looked up by Message-ID; a message the provider does not have needs nothing done);
- success is acknowledged (AcknowledgeOutboundMail, command id `outbox:<request>`); a failure is
  retried with exponential backoff, and after `max_attempts` (or at once when the mailbox is
  gone, disconnected or its user inactive) acknowledged as failed with the reason.

Attempts are counted in memory: a restart gives a request its full number of attempts again.
Credentials come from the credential store and are handed to the client factory only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from adapters.errors import MailboxGone, ProviderError, StoreError
from adapters.metrics import prometheus as metrics
from adapters.providers.outbound import OutboundClient, OutboundMessage, Sent
from adapters.tracking.outbox import OutboxTracking
from domain import commands as c
from domain import events as ev
from domain.errors import Rejection
from domain.mail import skip_reason
from domain.state import Mailbox, OutboundRequest, TenantState
from projections.projector import Logged
from runners.bootstrap.settings import Settings
from runners.services.backoff import Backoff
from runners.services.engine import Engine
from runners.services.follower import LogFollower, Waiter

if TYPE_CHECKING:
    from adapters.credentials.store import CredentialStore
    from adapters.providers.oauth import TokenEndpoint

log = structlog.get_logger("crmsync.outbox")

# (tenant, mailbox, its stored credentials) -> a client for it
ClientFactory = Callable[[str, Mailbox, "dict[str, Any] | None"], OutboundClient]


@dataclass
class Tracked:
    position: int  # of the requesting event in the log
    tenant: str
    mailbox: str
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None


class Permanent(Exception):
    """The request cannot succeed by retrying (mailbox gone, user inactive)."""


def _request_id(event: ev.DomainEvent) -> str | None:
    if isinstance(event, ev.EmailSent):
        return event.message.id
    if isinstance(event, ev.MessageDeletionRequested | ev.MessageReadRequested):
        return event.request
    return None


class Outbox:
    def __init__(self, engine: Engine, tracking: OutboxTracking, clients: ClientFactory, *,
                 max_attempts: int = 5, backoff: float = 2.0, max_backoff: float = 300.0,
                 batch_size: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.tracking = tracking
        self.clients = clients
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.clock = clock
        self.follower = LogFollower("outbox", position=tracking.position(), batch=batch_size,
                                    log=log)
        self._saved = self.position
        self.tracked: dict[tuple[str, str], Tracked] = {}  # (tenant, request), in log order

    # -- following the log ---------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Read up to here."""
        return self.follower.position

    @position.setter
    def position(self, value: int) -> None:
        self.follower.position = value

    def resume(self) -> None:
        """Start again from the durable watermark (after taking the lock, which another worker
        may have held meanwhile): what is tracked is read again from the log."""
        self.position = self._saved = self.tracking.position()
        self.tracked.clear()

    def read(self) -> int:
        """Read the log after `position`: track new requests, forget acknowledged ones."""
        return self.follower.read(self.engine, self._track)

    def _track(self, batch: Sequence[Logged]) -> None:
        for item in batch:
            e = item.event
            request = _request_id(e)
            if request is not None:
                self.tracked[(e.tenant, request)] = Tracked(
                    item.position, e.tenant, e.mailbox)  # type: ignore[attr-defined]
            elif isinstance(e, ev.OutboundMailAcknowledged):
                self.tracked.pop((e.tenant, e.request), None)

    def watermark(self) -> int:
        """Every request at or before this log position is acknowledged."""
        return min((t.position - 1 for t in self.tracked.values()), default=self.position)

    # -- one round -----------------------------------------------------------------------------
    def due(self) -> list[tuple[str, str]]:
        now = self.clock()
        heads: dict[tuple[str, str], tuple[str, str]] = {}
        for key, t in self.tracked.items():
            heads.setdefault((t.tenant, t.mailbox), key)  # the oldest open request per mailbox
        return [key for key in heads.values() if self.tracked[key].next_at <= now]

    def next_due_in(self) -> float | None:
        if not self.tracked:
            return None
        heads: dict[tuple[str, str], Tracked] = {}
        for t in self.tracked.values():
            heads.setdefault((t.tenant, t.mailbox), t)
        return max(0.0, min(t.next_at for t in heads.values()) - self.clock())

    def round(self) -> int:
        """Read the log, try every due request once, save the watermark. Returns attempts."""
        self.read()
        tried = 0
        for tenant, request in self.due():
            self.attempt(tenant, request)
            tried += 1
        if tried:
            self.read()
        mark = self.watermark()
        if mark != self._saved:  # an idle worker does not write
            self.tracking.save(mark)
            self._saved = mark
        return tried

    def attempt(self, tenant: str, request: str) -> None:
        tracked = self.tracked[(tenant, request)]
        state = self.engine.state(tenant)
        pending = state.outbound.get(request)
        if pending is None:  # acknowledged meanwhile (by an ack we have not read yet)
            self.tracked.pop((tenant, request), None)
            return
        tracked.attempts += 1
        try:
            sent = self._execute(state, pending)
        except Permanent as exc:
            self._ack(state, request, tracked, ok=False, error=str(exc))
            return
        except MailboxGone as exc:
            metrics.provider_failed(exc.provider, exc)
            self._ack(state, request, tracked, ok=False, error=f"mailbox gone: {exc.reason}")
            return
        except ProviderError as exc:
            metrics.provider_failed(exc.provider, exc)
            tracked.last_error = str(exc)
            if tracked.attempts >= self.max_attempts:
                metrics.dead_letter("outbox")
                self._ack(state, request, tracked, ok=False, error=tracked.last_error)
                return
            wait = min(self.max_backoff, self.backoff * 2 ** (tracked.attempts - 1))
            tracked.next_at = self.clock() + wait
            log.info("outbox_retry", tenant=tenant, mailbox=pending.mailbox, request=request,
                     attempt=tracked.attempts, wait=wait, error=tracked.last_error)
            return
        self._ack(state, request, tracked, ok=True, sent=sent)

    def _ack(self, state: TenantState, request: str, tracked: Tracked, *, ok: bool,
             sent: Sent | None = None, error: str | None = None) -> None:
        now = datetime.now(UTC)
        if state.last_at is not None and state.last_at > now:
            now = state.last_at  # domain time never runs back (E4)
        cmd = c.AcknowledgeOutboundMail(
            cmd="AcknowledgeOutboundMail", tenant=state.tenant, actor="system:outbox",
            command_id=f"outbox:{request}", mailbox=tracked.mailbox, request=request, ok=ok,
            provider_id=sent.provider_id if sent else None,
            provider_thread_id=sent.provider_thread_id if sent else None,
            error=None if ok else (error or "failed")[:2000], attempts=tracked.attempts)
        try:
            self.engine.execute(cmd, now=now, correlation_id=f"outbox:{request}")
        except Rejection as exc:
            log.warning("outbox_ack_rejected", tenant=state.tenant, request=request,
                        field=exc.field, reason=exc.reason)
        self.tracked.pop((state.tenant, request), None)
        log.info("outbox_acknowledged", tenant=state.tenant, mailbox=tracked.mailbox,
                 request=request, ok=ok, attempts=tracked.attempts,
                 provider_id=sent.provider_id if sent else None, error=error)

    # -- talking to the provider -----------------------------------------------------------------
    @contextmanager
    def _client(self, state: TenantState, mbx: Mailbox) -> Iterator[OutboundClient]:
        reason = skip_reason(state, mbx)
        if reason is not None:
            raise Permanent(reason)
        credentials = None
        if self.engine.credentials is not None:
            credentials = self.engine.credentials.get(state.tenant, mbx.id)
        client = self.clients(state.tenant, mbx, credentials)
        try:
            yield client
        finally:
            client.close()

    def _execute(self, state: TenantState, pending: OutboundRequest) -> Sent | None:
        mbx = state.mailboxes[pending.mailbox]
        with self._client(state, mbx) as client:
            if pending.operation == "send":
                message = self._outbound_message(state, pending)
                found = client.find_sent(mbx.address, message.message_id)
                return found if found is not None else client.send(mbx.address, message)
            target = self._provider_id(state, client, mbx, pending.id)
            if target is None:
                return None  # the provider never had it (a failed send): nothing to do
            if pending.operation == "delete":
                client.trash(mbx.address, target)
            else:
                client.set_read(mbx.address, target, bool(pending.read))
            return None

    def _provider_id(self, state: TenantState, client: OutboundClient, mbx: Mailbox,
                     message_id: str) -> str | None:
        key = (mbx.id, message_id)
        if key not in state.sent_provider_ids:
            return message_id  # synced from the provider: its id is the provider's
        known = state.sent_provider_ids[key]
        if known is not None:
            return known
        rfc = state.messages[key].rfc_id
        found = client.find_sent(mbx.address, rfc) if rfc else None
        return found.provider_id if found is not None else None

    def _outbound_message(self, state: TenantState, pending: OutboundRequest) -> OutboundMessage:
        sent = next(iter(self.engine.events(state.tenant, after=pending.seq - 1)),
                    None)
        if sent is None or not isinstance(sent[1], ev.EmailSent):
            raise StoreError(f"tenant {state.tenant!r}: event {pending.seq} is not the EmailSent "
                             f"of {pending.id!r}")
        msg = sent[1].message
        thread = state.threads[sent[1].thread]
        earlier = [state.messages[(thread.mailbox, m)].rfc_id for m in thread.messages
                   if m != msg.id]
        references = tuple(r for r in dict.fromkeys(earlier) if r)
        return OutboundMessage(
            message_id=msg.message_id or f"<{msg.id}.{state.tenant}@crmsync.invalid>",
            from_=msg.from_, to=tuple(msg.to), cc=tuple(msg.cc), subject=msg.subject,
            body=msg.body, sent_at=msg.sent_at, in_reply_to=references[-1] if references else None,
            references=references, provider_thread_id=_provider_thread(state, thread.id,
                                                                        thread.mailbox))


def _provider_thread(state: TenantState, thread_id: str, mailbox: str) -> str | None:
    """The provider's thread id of a CRM thread: its own suffix when the thread came from the
    provider, else the alias recorded by an earlier ack."""
    suffix = thread_id.removeprefix(f"{mailbox}:")
    if not suffix.startswith(("crm-", "crmsync-")):
        return suffix
    for alias, target in state.thread_aliases.items():
        if target == thread_id:
            return alias.removeprefix(f"{mailbox}:")
    return None


def provider_clients(settings: Settings, store: CredentialStore | None = None,
                     still_set: Callable[[str, str], bool] | None = None,
                     tokens: dict[str, TokenEndpoint] | None = None) -> ClientFactory:
    """The real adapters, configured from the settings: `CRMSYNC_GMAIL_API_URL`,
    `CRMSYNC_GRAPH_API_URL` (base URLs, for tests and sovereign clouds), `CRMSYNC_SMTP_PORT`
    (587 STARTTLS by default; IMAP mailboxes submit over SMTP at their IMAP host with the same
    user and password). Without stored credentials a mailbox cannot be written to.

    With the credential `store`, a provider's 401 renews the OAuth token once with the stored
    refresh token at `tokens[provider]` (the sync workers' `token_endpoints`) and writes it
    back, as the sync workers do; `still_set(tenant, mailbox)` keeps a refresh from outliving
    a disconnection."""
    from adapters.providers.gmail.client import DEFAULT_GMAIL_API_URL
    from adapters.providers.gmail.outbound import GmailOutbound
    from adapters.providers.graph.client import DEFAULT_GRAPH_API_URL
    from adapters.providers.graph.outbound import GraphOutbound
    from adapters.providers.imap.client import ImapAccount
    from adapters.providers.imap.outbound import ImapOutbound, SmtpSubmission
    from adapters.providers.oauth import StoredOAuthToken


    def make(tenant: str, mbx: Mailbox, credentials: dict[str, Any] | None) -> OutboundClient:
        if not credentials:
            raise ProviderError(mbx.provider, "credentials missing: reconnect the mailbox")
        if mbx.provider == "imap":
            tls = bool(credentials.get("tls", True))
            account = ImapAccount(str(credentials["host"]), int(credentials["port"]),
                                  str(credentials["user"]), str(credentials["password"]),
                                  tls="ssl" if tls else "none")
            smtp = SmtpSubmission(account.host, settings.SMTP_PORT,
                                  account.user, account.password,
                                  tls="starttls" if tls else "none")
            return ImapOutbound(account, smtp, sent_folder=settings.IMAP_SENT)
        kind = "gmail" if mbx.provider == "gmail" else "graph"
        token: Callable[[], str]
        refresh: Callable[[], None] | None = None
        if store is None:
            text = str(credentials.get("access_token", ""))
            token = lambda: text  # noqa: E731
        else:
            stored = StoredOAuthToken(
                store, tenant, mbx.id, credentials, (tokens or {}).get(mbx.provider),
                provider=kind,
                still_set=(lambda: still_set(tenant, mbx.id)) if still_set else lambda: True)
            token, refresh = stored, stored.refresh
        if kind == "gmail":
            return GmailOutbound(token, settings.GMAIL_API_URL or DEFAULT_GMAIL_API_URL,
                                 refresh=refresh)
        return GraphOutbound(token, settings.GRAPH_API_URL or DEFAULT_GRAPH_API_URL,
                             refresh=refresh)

    return make


def configured_clients(engine: Engine, settings: Settings) -> ClientFactory:
    """`provider_clients` as the runners use it: with the engine's credential store, the token
    endpoints of the settings, and the log's word on whether credentials are still set."""
    from runners.entrypoints.sync_runner import token_endpoints

    return provider_clients(settings, engine.credentials, engine.credentials_still_set,
                            token_endpoints(settings))


def open_tracking(db: str, postgres_url: str | None) -> OutboxTracking:
    if postgres_url:
        from adapters.tracking.outbox_postgres import PostgresOutboxTracking

        return PostgresOutboxTracking(postgres_url)
    from adapters.tracking.outbox_sqlite import SqliteOutboxTracking

    return SqliteOutboxTracking(db)


def run(outbox: Outbox, waiter: Waiter, *, poll: float = 1.0,
        stop: threading.Event | None = None, backoff: Backoff | None = None,
        sleep: Callable[[float], object] | None = None, signals: bool = False) -> None:
    """Until `stop` (or, with `signals`, SIGTERM/SIGINT; the waiter is closed at the end).
    A store outage does not end the worker (issue #10 point 10): it lets go of its lock, backs
    off, takes the lock again and resumes from the durable watermark (another outbox may have
    run meanwhile; a send already made is found by its Message-ID)."""
    follower = outbox.follower
    follower.waiter, follower.stop = waiter, stop or threading.Event()
    follower.backoff, follower.sleep = backoff or Backoff(), sleep

    @contextmanager
    def session() -> Iterator[None]:
        with outbox.tracking.exclusive():
            outbox.resume()
            log.info("outbox started", position=outbox.position)
            yield

    def one_round() -> float:
        if outbox.round():
            return 0.0
        due_in = outbox.next_due_in()
        return poll if due_in is None else min(poll, max(due_in, 0.01))

    if signals:
        follower.run_until_signalled(one_round, session)
    else:
        follower.run(one_round, session)
    log.info("outbox stopped", position=outbox.position, open=len(outbox.tracked))


def in_background(db: str, postgres: str | None, settings: Settings) -> Callable[[], None]:
    """`crmsync serve --outbox`: the worker in a thread of the serving process, on an engine of
    its own (the API's engine is used under the API's lock). Returns the function that stops it."""
    from runners.bootstrap.config import open_engine, open_waiter, postgres_url

    engine = open_engine(db, postgres, settings)
    tracking = open_tracking(db, postgres_url(postgres, settings))
    worker = Outbox(engine, tracking, configured_clients(engine, settings))
    waiter = open_waiter(engine, postgres, settings)
    stop = threading.Event()

    def main() -> None:
        try:
            run(worker, waiter, stop=stop)
        except Exception:  # the API keeps serving; the failure is in the log
            log.exception("outbox stopped by an error")

    thread = threading.Thread(target=main, name="outbox", daemon=True)
    thread.start()

    def stop_it() -> None:
        stop.set()
        thread.join(30)
        waiter.close()
        tracking.close()
        engine.close()

    return stop_it
