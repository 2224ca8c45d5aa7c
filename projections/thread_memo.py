"""A thread's ordered live messages and keys, carried from one time group to the next (pure).

At the end of each time group the projector computes the rows of every thread the group touched
from the thread's ordered live messages (`rows.thread_facts`), and before a thread's first event
of a group it takes the thread's keys (`touched.thread_keys`, from its links). Unpacking every
message of the thread for each of its messages made a thread's cost grow with the square of its
length (docs/decisions/audit-and-erasure.md, "Rebuild rate: a thread's messages carried between
time groups"). This memo keeps, per thread, the messages and keys computed at its last group's
end, and trusts them only while the tenant's state has changed since by nothing but *new
messages*: a `MessageSynced` or `EmailSent` of a message id its mailbox does not hold yet, into a
thread of that mailbox. Such an event only appends one message to its own thread (and changes
its participants, so its links and bases are computed again; other threads' links do not depend
on it: `visibility.links`). Any
other event folded, an event folded outside `collect` (the state's `seq` moved) or another state
object for the tenant (refolded after a failure) makes every entry of the tenant stale (an epoch:
O(1), stale entries leave by age). The messages of a thread are then the kept ones plus the new
ones, sorted stably by send time: the order `rows.ordered_messages` gives the whole thread,
since new messages come last in arrival order.

Bounded: at most `budget` messages are held over all tenants, the least recently used threads
leave first (a build's RSS must not grow with the history: the packed state exists for that).
"""

from __future__ import annotations

from domain import events as ev
from domain.message_table import Message
from domain.state import TenantState
from domain.thread_table import Thread
from projections.rows import ordered_messages, sent_at
from projections.touched import Keys

_BUDGET = 10_000  # messages held (~9 MB of `Message` objects)


class _Tenant:
    """Where one tenant's entries are valid: its state object at `seq`, entries of `epoch`."""

    __slots__ = ("added", "epoch", "seq", "state")

    def __init__(self, state: TenantState, epoch: int) -> None:
        self.state, self.seq, self.epoch = state, state.seq, epoch
        self.added: dict[str, list[str]] = {}  # thread -> ids of new messages since its entry


class ThreadMemo:
    def __init__(self, budget: int = _BUDGET) -> None:
        self.budget = budget
        self.tenants: dict[str, _Tenant] = {}
        # (tenant, thread) -> (epoch, ordered live messages, the thread's keys)
        self.entries: dict[tuple[str, str], tuple[int, list[Message], Keys]] = {}
        self.held = 0  # messages in `entries`
        self._epoch = 0

    def reset(self) -> None:
        self.tenants, self.entries, self.held = {}, {}, 0

    def forget(self, tenant: str) -> None:
        self.tenants.pop(tenant, None)

    def _valid(self, state: TenantState) -> _Tenant:
        """The tenant's entry if it still describes `state`, else a fresh (empty) one."""
        mine = self.tenants.get(state.tenant)
        if mine is None or mine.state is not state or mine.seq != state.seq:
            self._epoch += 1
            mine = self.tenants[state.tenant] = _Tenant(state, self._epoch)
        return mine

    def start(self, state: TenantState) -> _Tenant:
        """Before `collect` folds an event: the tenant's entry, checked against `state`."""
        return self._valid(state)

    def new_message(self, state: TenantState, event: ev.DomainEvent) -> str | None:
        """Before `event` is folded: the id of the message it appends to a thread of its own
        mailbox, when that is all it does, else None (the entries go stale once folded)."""
        kind = type(event)
        if kind is not ev.MessageSynced and kind is not ev.EmailSent:
            return None
        e: ev.MessageSynced | ev.EmailSent = event  # type: ignore[assignment]
        if (e.mailbox, e.message.id) in state.messages:
            return None
        thread = state.threads.get(e.thread)
        if thread is not None and thread.mailbox != e.mailbox:
            return None
        return e.message.id

    def folded(self, mine: _Tenant, state: TenantState, event: ev.DomainEvent,
               new: str | None) -> None:
        """After `collect` folded `event` (`new`: what `new_message` said of it before)."""
        if new is None or mine.state is not state:
            self.tenants.pop(state.tenant, None)  # stale: the next use starts an epoch
            return
        mine.added.setdefault(event.thread, []).append(new)  # type: ignore[attr-defined]
        mine.seq = state.seq

    def keys_before(self, mine: _Tenant, thread_id: str) -> Keys | None:
        """The thread's keys as its last group's end left them, while still valid."""
        if thread_id in mine.added:
            return None
        found = self.entries.get((mine.state.tenant, thread_id))
        return found[2] if found is not None and found[0] == mine.epoch else None

    def ordered(self, state: TenantState, thread: Thread) -> list[Message]:
        """The thread's live messages ordered as `rows.ordered_messages` orders them."""
        mine = self._valid(state)
        added = mine.added.get(thread.id)  # until `keep` takes the thread's messages
        found = self.entries.get((state.tenant, thread.id))
        if found is None or found[0] != mine.epoch:
            return ordered_messages(state, thread)
        kept = found[1]
        if not added:
            return kept
        box = thread.mailbox
        messages = state.messages
        return sorted([*kept, *(messages[(box, m)] for m in added)], key=sent_at)

    def keep(self, state: TenantState, thread_id: str, messages: list[Message], keys: Keys
             ) -> None:
        """The thread's messages and keys at its group's end (after `ordered`)."""
        mine = self.tenants.get(state.tenant)
        if mine is None or mine.state is not state or mine.seq != state.seq:
            return
        mine.added.pop(thread_id, None)
        at = (state.tenant, thread_id)
        old = self.entries.pop(at, None)
        if old is not None:
            self.held -= len(old[1])
        self.entries[at] = (mine.epoch, messages, keys)
        self.held += len(messages)
        entries = self.entries
        while self.held > self.budget and entries:
            oldest = next(iter(entries))
            self.held -= len(entries.pop(oldest)[1])
