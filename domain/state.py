"""Tenant state: the fold of a tenant's events (pure). Both the command side and projections use it.

`evolve(state, event, seq)` applies one event; `seq` is the event's position in the tenant's
stream, used to name the event that decided a rule (SPEC V11). The state's shape is
`domain.tenant` (re-exported here: callers read `domain.state` as the state and its fold); the
folds are by area: `domain.record_folds`, `domain.mail_folds`, `domain.contact_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain import contact_state, mail_folds, record_folds
from domain import events as ev
from domain.mail_folds import SyncedMessage, fold_synced
from domain.tenant import (
    EventRef,
    Mailbox,
    OutboundRequest,
    Push,
    Record,
    TenantSettings,
    TenantState,
    User,
    utc_iso,
)
from domain.thread_table import Thread

__all__ = ["FOLDS", "EventRef", "Mailbox", "OutboundRequest", "Push", "Record", "SyncedMessage",
           "TenantSettings", "TenantState", "Thread", "User", "evolve", "evolve_synced",
           "stamp", "utc_iso"]


def _no_state(s: TenantState, e: Any, seq: int) -> None:
    """Audit-only events (rejections, recorded contact-sync commands)."""


FOLDS: dict[type[ev.DomainEvent], Callable[[TenantState, Any, int], None]] = {
    **record_folds.FOLDS,
    **mail_folds.FOLDS,
    ev.CommandHadNoEffect: _no_state,
    ev.ContactSyncCommandRecorded: _no_state,
    ev.ExternalContactChangeQueued: _no_state,
    ev.ExternalContactChangeAcknowledged: _no_state,
    ev.DeadLetterReplayed: _no_state,
}


def _then(first: Callable[[TenantState, Any, int], None],
          second: Callable[[TenantState, Any, int], None]
          ) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        first(s, e, seq)
        second(s, e, seq)

    return fold


# contact sync and merge (SPEC §5): its own events, and provenance of contact values (C8)
FOLDS.update(contact_state.FOLDS)
for _kind, _after in contact_state.AFTER.items():
    FOLDS[_kind] = _then(FOLDS[_kind], _after)
assert set(FOLDS) == set(ev.EVENT_TYPES), "every event type needs a fold"


def evolve_synced(state: TenantState, synced: SyncedMessage, seq: int) -> TenantState:
    """`evolve` of a MessageSynced given as the fold reads it (decoded from its stored form
    without the event model: a tenant's stream is mostly these)."""
    fold_synced(state, synced, seq)
    state.seq = seq
    state.last_at = synced.occurred_at
    if synced.command_id is not None:
        state.applied_commands.add((synced.actor, synced.command_id))
    return state


def evolve(state: TenantState, event: ev.DomainEvent, seq: int) -> TenantState:
    """Apply one event in place and return the state. `seq` must be state.seq + 1."""
    FOLDS[type(event)](state, event, seq)
    stamp(state, event, seq)
    return state


def stamp(state: TenantState, event: ev.DomainEvent | SyncedMessage, seq: int) -> None:
    """The envelope's part of a fold: the stream position and time, and E5's command id
    (`evolve_synced` does the same inline: it runs for every message of a tenant)."""
    state.seq = seq
    state.last_at = event.occurred_at
    if event.command_id is not None:
        state.applied_commands.add((event.actor, event.command_id))
