"""Admin answers (SPEC §7): the attention list (problems) and the tenant's settings as data.

Pure: no I/O, no clocks. The caller folds the tenant's events of `EVENTS` into a `ProblemLog`
(the state does not say since when a mailbox is gone or suspect, nor which dead letters are
open) and passes the command-side `TenantState` and `now` for the stale-sync check.

- `problems(state, log, now, stale_after)`: one entry per problem, oldest first:
  `gone`, `disconnected`, `suspect` (L5, with the held deletions), `refused` (the provider refused
  the credentials: a reconnection with new ones is needed), `dead_letter` (a delivery given up
  and not replayed), `stale` (a connected mailbox of an active user with no successful sync for
  longer than `stale_after`). Each names `since`, the event that started it and `resolve`, the
  command that ends it. A deactivated or deleted user's mailboxes are problems only while they
  hold deletions: otherwise L1/L2 say they do not sync.
- `settings(state)`: configuration, users (role, manager, status, global levels, address shares).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from domain import events as ev
from domain.state import EventRef, TenantState

# The events a ProblemLog needs; a reader may skip every other event before decoding it.
EVENTS: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.MailboxConnected, ev.MailboxDisconnected, ev.MailboxReconnected, ev.MailboxReportedGone,
    ev.MailboxCursorAdvanced, ev.MessageDeletionHeld, ev.MailboxDeletionsConfirmed,
    ev.DeliveryDeadLettered, ev.DeadLetterReplayed,
})
REFUSED = "CredentialsRejected"  # the error text of a delivery the provider's auth refused
DEFAULT_STALE_AFTER = timedelta(hours=24)


def _ref(event: ev.DomainEvent, seq: int) -> EventRef:
    return EventRef(seq, type(event).__name__, event.occurred_at, event.actor)


@dataclass
class ProblemLog:
    """What the state does not keep: since when each mailbox is in its status, since when it
    holds deletions, its last cursor advance, its last refusal, and the open dead letters."""

    status_since: dict[str, EventRef] = field(default_factory=dict)
    held_since: dict[str, EventRef] = field(default_factory=dict)
    last_advance: dict[str, datetime] = field(default_factory=dict)
    refused: dict[str, tuple[EventRef, str, str]] = field(default_factory=dict)  # ref, dl id, error
    dead: dict[str, tuple[EventRef, ev.DeliveryDeadLettered]] = field(default_factory=dict)

    def feed(self, seq: int, event: ev.DomainEvent) -> None:
        ref = _ref(event, seq)
        match event:
            case ev.MailboxConnected() | ev.MailboxReconnected():
                self.status_since[event.mailbox] = ref
                self.refused.pop(event.mailbox, None)  # new sign-in: the refusal is answered
            case ev.MailboxDisconnected() | ev.MailboxReportedGone():
                self.status_since[event.mailbox] = ref
            case ev.MailboxCursorAdvanced():
                self.last_advance[event.mailbox] = event.occurred_at
                self.refused.pop(event.mailbox, None)  # the provider took the credentials
            case ev.MessageDeletionHeld():
                self.held_since.setdefault(event.mailbox, ref)
            case ev.MailboxDeletionsConfirmed():
                self.held_since.pop(event.mailbox, None)
            case ev.DeliveryDeadLettered():
                self.dead[event.dead_letter_id] = (ref, event)
                if event.mailbox_id is not None and event.error.startswith(REFUSED):
                    self.refused[event.mailbox_id] = (ref, event.dead_letter_id, event.error)
            case ev.DeadLetterReplayed():
                self.dead.pop(event.dead_letter_id, None)

    def feed_all(self, events: Any) -> ProblemLog:
        for seq, event in events:
            self.feed(seq, event)
        return self


def _problem(kind: str, since: EventRef | None, at: datetime | None, detail: str,
             resolve: str, **ids: Any) -> dict[str, Any]:
    when = since.occurred_at if since is not None else at
    return {"kind": kind, **ids, "since": when.isoformat() if when is not None else None,
            "since_event": since.as_json() if since is not None else None,
            "detail": detail, "resolve": resolve}


def problems(state: TenantState, log: ProblemLog, now: datetime,
             stale_after: timedelta = DEFAULT_STALE_AFTER) -> list[dict[str, Any]]:
    """The attention list (module docstring), oldest first, then by kind and id."""
    out: list[dict[str, Any]] = []
    for mid in sorted(state.mailboxes):
        mbx = state.mailboxes[mid]
        ids = {"mailbox": mid, "user": mbx.user, "address": mbx.address,
               "provider": mbx.provider}
        since = log.status_since.get(mid)
        if mbx.pending_deletions:  # held deletions wait for an operator, whoever the user
            held = list(mbx.pending_deletions)
            out.append(_problem(
                "suspect", log.held_since.get(mid), None,
                f"{len(held)} deletions held by the mass-deletion guard (L5): "
                f"{mbx.last_error or 'mass deletion'}",
                f'ConfirmMailboxDeletions {{"mailbox": "{mid}", "apply": true|false}}',
                **ids, held_deletions=held))
        user = state.users.get(mbx.user)
        if user is None or user.status != "active":
            continue  # L1/L2: a deactivated or deleted user's mailbox does not sync by design
        if mbx.status == "gone":
            out.append(_problem(
                "gone", since, None, "the account no longer exists at the provider (L4); "
                "history is kept", f'ReconnectMailbox {{"mailbox": "{mid}"}} once the account '
                "exists again", **ids))
        elif mbx.status == "disconnected":
            out.append(_problem(
                "disconnected", since, None, "sync is stopped (S10); history is kept",
                f'ReconnectMailbox {{"mailbox": "{mid}"}}', **ids))
        refused = log.refused.get(mid)
        if refused is not None:
            ref, dead_id, error = refused
            out.append(_problem(
                "refused", ref, None, f"the provider refused the credentials: {error}",
                f'DisconnectMailbox {{"mailbox": "{mid}"}}, ConnectMailbox with a new mailbox '
                f'id and new credentials, then `crmsync deadletters replay {dead_id}`', **ids))
        if mbx.status == "connected":
            last = max((t for t in (log.last_advance.get(mid), mbx.last_sync_at)
                        if t is not None), default=None)
            start = last if last is not None else (since.occurred_at if since else None)
            if start is not None and now - start > stale_after:
                what = f"last successful sync {last.isoformat()}" if last is not None \
                    else "never synced since connected"
                out.append(_problem(
                    "stale", None if last is not None else since, start,
                    f"{what}; nothing for more than {int(stale_after.total_seconds())} s",
                    "check the sync runner (`crmsync run sync`) and the mailbox's last error: "
                    f"{mbx.last_error or 'none'}", **ids))
    for dead_id, (ref, dead) in log.dead.items():
        out.append(_problem(
            "dead_letter", ref, None, f"{dead.provider} delivery {dead.delivery_id} given up "
            f"after {dead.attempts} attempts: {dead.error}",
            f"crmsync deadletters replay {dead_id}", dead_letter=dead_id,
            mailbox=dead.mailbox_id))
    out.sort(key=lambda p: (p["since"] or "", p["kind"], p.get("mailbox") or "",
                            p.get("dead_letter") or ""))
    return out


def settings(state: TenantState) -> dict[str, Any]:
    """Tenant configuration; users with role, manager, status, global levels (V3) and address
    shares (V2: per record and address, as set, with the event that set it)."""
    conf = state.settings
    shares: dict[str, list[dict[str, Any]]] = {}
    for rid in sorted(state.records):
        for (uid, address), (level, ref) in sorted(state.records[rid].settings.items()):
            shares.setdefault(uid, []).append({"record": rid, "address": address,
                                               "setting": level, "event": ref.as_json()})
    users = [{"user": u.id, "email": u.email, "role": u.role, "manager": u.manager,
              "status": u.status,
              "levels": {rtype: {"level": level, "event": ref.as_json()}
                         for rtype, (level, ref) in sorted(u.levels.items())},
              "address_shares": shares.get(u.id, [])}
             for u in sorted(state.users.values(), key=lambda u: u.id)]
    return {"tenant": state.tenant, "position": state.seq,
            "configuration": {
                "bcc_address": conf.bcc_address, "sending_domain": conf.sending_domain,
                "attachment_policy": conf.attachment_policy,
                "attachment_max_bytes": conf.attachment_max_bytes,
                "allowed_attachment_types": list(conf.allowed_attachment_types),
                "mass_delete_threshold": conf.mass_delete_threshold},
            "users": users}
