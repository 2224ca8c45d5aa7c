"""Push channels of the sync workers (issue #4): a Graph change subscription or a Gmail watch per
syncing mailbox, created when missing (or expired, or watching an old address or scope),
renewed past half its lifetime, replaced when Graph removed it; each change is recorded as an
event (RecordPushSubscription), and a mailbox that was without a channel catches up from its
cursor. `PushChannels` is the part of `runners.services.sync_worker.SyncWorker` that does it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from adapters.errors import (
    MailboxGone,
)
from adapters.providers.sources import MailSource, PushTarget
from domain import commands as c
from domain.mail import skip_reason
from domain.state import Mailbox, Push, TenantState
from runners.services.engine import Engine
from runners.services.mail_directory import (
    Directory,
    MailboxRef,
)
from runners.services.sync_common import MailboxLocks, Outcome, describe, sync_command

log = structlog.get_logger("crmsync.sync")


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


def cursor_covers(cursor: str | None, history_id: int | None) -> bool:
    """A Gmail cursor (a history id at a round's end) at or past the watch's start history id:
    nothing happened in between, no catch-up needed."""
    return cursor is not None and cursor.isdigit() and history_id is not None \
        and int(cursor) >= history_id

class PushChannels:
    """The push-channel side of a sync worker (mixed into SyncWorker, which provides what is
    declared here)."""

    engine: Engine
    locks: MailboxLocks
    clock: Callable[[], datetime]
    push: PushSettings | None
    directory: Directory
    owns: Callable[[str], bool]

    if TYPE_CHECKING:  # the worker's own
        def _source(self, ref: MailboxRef, mbx: Mailbox, out: Outcome) -> MailSource | None: ...

        def _apply(self, tenant: str, commands: Sequence[c.Command]) -> int: ...

        def sync_mailbox(self, ref: MailboxRef, delivery_id: str | None) -> Outcome: ...

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
            if not self.push.enabled(known.provider) or not self.owns(ref.tenant):
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
                out.events += self._apply(ref.tenant, [sync_command(
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
                out.events += self._apply(ref.tenant, [sync_command(c.ReportMailboxGone, ref)])
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
                out.events += self._apply(ref.tenant, [sync_command(
                    c.RecordPushSubscription, ref, action="renewed", reason=trigger,
                    subscription_id=renewed.id, expires_at=renewed.expires_at)])
                out.push = "renewed"
                log.info("push_renewed", tenant=ref.tenant, mailbox=ref.mailbox,
                         subscription_id=renewed.id, expires_at=renewed.expires_at.isoformat(),
                         reason=trigger)
                return False
            trigger = "renewal_refused"
        created = channel.subscribe(mbx.address, target)
        out.events += self._apply(ref.tenant, [sync_command(
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
        return mbx.cursor is not None and not cursor_covers(mbx.cursor, created.history_id)
