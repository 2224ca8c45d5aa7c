"""The command side's tenants with mailboxes folded when first touched (issue #15, PostgreSQL;
the state's rules: `domain.lazy_mailboxes`). `EventStore` delegates here when
`CRMSYNC_LAZY_MAILBOXES` is on: the first load of a tenant folds its tenant-wide events and keeps
aside, undecoded, the few events of each mailbox that are not synced mail; a mailbox is folded
when a command first touches it (`load`), from its synced mail read by index up to the state's
seq and the events kept aside, in stream order.

Consistency: the start reads the stream's head first, then every event up to it; an event
appended after that is folded (or kept aside) by the fast-forward every `EventStore.state` makes;
a mailbox's load reads its synced mail up to the state's seq, which only committed events have.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import structlog

from adapters.eventstore import lazy_reads_postgres as reads
from domain.errors import MailboxNotLoaded
from domain.events import DomainEvent
from domain.lazy_mailboxes import Folded, fold_lazily, lazy_state, load, scope, unloaded
from domain.state import TenantState

if TYPE_CHECKING:
    from adapters.eventstore.store import EventStore, StoredRow

log = structlog.get_logger("crmsync.store")
WRITERS = frozenset(reads.WRITERS)
# events kept aside for one unloaded mailbox, at most: past it the mailbox is folded (a process
# that never touches a mailbox would otherwise keep its cursor advances forever)
KEEP = 1000


class LazyTenants:
    """Per tenant: the events kept aside for each mailbox not loaded yet."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.kept: dict[str, dict[str, list[StoredRow]]] = {}

    def start(self, tenant: str) -> TenantState:
        """A lazy state of `tenant` at its stream's head."""
        from adapters.eventstore.store import stream_id

        store, stream = self.store, stream_id(tenant)
        recorder, to_fold = store.app.recorder, store.mapper.to_fold
        state = lazy_state(tenant)
        kept: dict[str, list[StoredRow]] = {}
        top = reads.head(recorder, stream)
        if top is None:
            self.kept[tenant] = kept
            return state
        for n, (seq, topic, body) in enumerate(reads.without_mail(recorder, stream, top[0])):
            if n % 5000 == 0:
                store.keys.expire()  # L2, as for every page read
            away = fold_lazily(state, to_fold(stream, seq, topic, body, False), seq)
            if away and topic not in WRITERS:
                for mailbox in away:
                    kept.setdefault(mailbox, []).append((seq, topic, body))
        if state.seq < top[0]:  # the head is synced mail: seq and time as its fold leaves them
            item = to_fold(stream, top[0], top[1], top[2], False)
            state.seq, state.last_at = top[0], item.occurred_at
        self.kept[tenant] = kept
        log.info("tenant_started_lazily", tenant=tenant, seq=state.seq,
                 mailboxes=len(unloaded(state) or ()))
        return state

    def fold(self, state: TenantState, rows: Iterable[StoredRow]) -> int:
        """The fast-forward of a lazy state over rows after its seq; how many."""
        from adapters.eventstore.store import stream_id

        stream, to_fold = stream_id(state.tenant), self.store.mapper.to_fold
        kept = self.kept.setdefault(state.tenant, {})
        folded, full = 0, set()
        for seq, topic, body in rows:
            away = fold_lazily(state, to_fold(stream, seq, topic, body, False), seq)
            if away and topic not in WRITERS:  # synced mail is read again by index at load
                for mailbox in away:
                    events = kept.setdefault(mailbox, [])
                    events.append((seq, topic, body))
                    if len(events) >= KEEP:
                        full.add(mailbox)
            folded += 1
        if full:  # bounded: a busy mailbox is folded instead (or the tenant whole)
            self.load(state, full)
        return folded

    def _give_up(self, tenant: str) -> bool:
        """This tenant is folded whole in this process from now on (its cached lazy state,
        perhaps half loaded, is dropped); False."""
        self.store.give_up_lazy(tenant)
        return False

    def load(self, state: TenantState, mailboxes: Iterable[str]) -> bool:
        """Fold `mailboxes` (those not loaded) into `state`; False when one cannot be read by
        index or folded in place: the state is then dropped and the tenant folded whole."""
        from adapters.eventstore.store import stream_id

        waiting = unloaded(state)
        if waiting is None:
            return True
        store, stream = self.store, stream_id(state.tenant)
        to_fold = store.mapper.to_fold
        kept = self.kept.setdefault(state.tenant, {})
        for mailbox in sorted(set(mailboxes) & waiting):
            mail = reads.mailbox_mail(store.app.recorder, stream, mailbox, state.seq)
            if mail is None:
                return self._give_up(state.tenant)
            store.keys.expire()
            rows = sorted({*mail, *kept.get(mailbox, ())})
            items: list[tuple[int, Folded]] = [
                (seq, to_fold(stream, seq, topic, body, False)) for seq, topic, body in rows]
            try:
                load(state, mailbox, items)
            except MailboxNotLoaded:  # a fold that reached another mailbox: fold whole
                log.error("mailbox_not_loaded_in_place", tenant=state.tenant, mailbox=mailbox)
                return self._give_up(state.tenant)
            except BaseException:
                self.store.forget(state.tenant)  # half folded: never used again
                raise
            kept.pop(mailbox, None)
            log.debug("mailbox_loaded", tenant=state.tenant, mailbox=mailbox, events=len(items))
        return True

    def ready_for(self, state: TenantState, events: Sequence[DomainEvent]) -> bool:
        """Load the mailboxes `events` fold into, before they are folded into `state`."""
        waiting = unloaded(state)
        if not waiting:
            return True
        names: set[str] = set()
        for event in events:
            names |= scope(state, event) or set()
        return self.load(state, names & waiting)

    def forget(self, tenant: str) -> None:
        self.kept.pop(tenant, None)
