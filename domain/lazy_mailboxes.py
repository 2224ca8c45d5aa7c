"""A command-side state whose mailboxes are folded when a command first touches them (pure;
issue #15: the first command after a start on a tenant of a million messages).

The contract:
- `lazy_state(tenant)` is a command-side state (no message content) whose mail structures
  know which mailboxes are not folded yet (`unloaded`). Asked about such a mailbox — its
  `Mailbox`, a message or thread of it, an index keyed by it, or any question about every
  mailbox, thread, message or outbox request — they raise `MailboxNotLoaded` naming it (empty:
  all of them). A rule never sees a mailbox that is not there: it sees an exception, and the
  caller loads and decides again. Nothing else changes: the rules are those of `decide`.
- `fold_lazily(state, event, seq)` folds an event of the stream: the tenant-wide ones, the
  tenant-wide part of a mailbox's event (its users' addresses, E5's command ids) and its part
  for mailboxes already loaded; it returns the unloaded mailboxes whose part it did not fold
  (the caller keeps the event for them, or reads it again when it loads them). A mailbox
  connected while the state is lazy starts unloaded.
- `load(state, mailbox, events)` folds a mailbox's events, in stream order and none after
  `state.seq`, as the whole fold would have (a mailbox's events read and write only that
  mailbox's part of the state — its `Mailbox`, messages, threads and indexes — and parts no rule
  reads: a thread link's record-side index, read by projections only; a thread event is folded
  once every mailbox its thread id may belong to is loaded), and leaves `seq` and `last_at` as
  they were.
After every mailbox was loaded, the state equals the whole fold of the same events
(tests/unit/test_lazy_mailboxes.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NoReturn, TypeVar

from domain import events as ev
from domain.errors import MailboxNotLoaded
from domain.mail_folds import note_address
from domain.message_table import Message, MessageTable
from domain.state import SyncedMessage, TenantState, evolve, evolve_synced, stamp
from domain.tenant import Mailbox, OutboundRequest
from domain.thread_table import ThreadTable

K = TypeVar("K")
V = TypeVar("V")
Folded = ev.DomainEvent | SyncedMessage


class Unloaded(set[str]):
    """The mailboxes not folded yet, and every mailbox id known (`known`, loaded or not): a
    thread id `{mailbox}:...` may fit several ids when one holds ':' (`candidates`)."""

    def __init__(self) -> None:
        super().__init__()
        self.known: set[str] = set()
        self.colon: set[str] = set()  # known ids holding ':' (rare)
        # no mailbox waits any more (a whole state was asked for): one connected later is
        # folded at once, so a holder of this state never meets MailboxNotLoaded
        self.closed = False

    def know(self, mailbox: str) -> None:
        if mailbox not in self.known:
            self.known.add(mailbox)
            if ":" in mailbox:
                self.colon.add(mailbox)

    def add(self, mailbox: str) -> None:
        self.know(mailbox)
        super().add(mailbox)

    def candidates(self, thread_id: object) -> frozenset[str]:
        """The known mailboxes a thread id may belong to (its id's prefix before a ':')."""
        if not isinstance(thread_id, str):
            return frozenset()
        head = thread_id.partition(":")[0]
        found = {head} if head in self.known else set()
        found.update(m for m in self.colon if thread_id.startswith(m + ":"))
        return frozenset(found)

    def of_thread(self, thread_id: object) -> frozenset[str]:
        """The unloaded mailboxes the thread may belong to (a lookup of it is unsure)."""
        return self.candidates(thread_id) & self if self else frozenset()

    def refuse(self, mailbox: str | None = None) -> NoReturn:
        raise MailboxNotLoaded(frozenset() if mailbox is None else frozenset((mailbox,)))

    def check(self, mailbox: object) -> None:
        if isinstance(mailbox, str) and mailbox in self:
            self.refuse(mailbox)

    def check_all(self) -> None:
        if self:
            self.refuse()


class ByMailbox(dict[K, V]):
    """A dict keyed by (mailbox, ...) (`missing_parents`, `local_ids`, `sent_provider_ids`),
    by `{mailbox}:...` (`thread_aliases`), by mailbox (a thread table's `by_mailbox`), or by
    outbox request (`outbound`: any miss is unsure while a mailbox waits)."""

    def __init__(self, unloaded: Unloaded, key: str) -> None:
        super().__init__()
        self.unloaded, self.key = unloaded, key

    def _check(self, k: object) -> None:
        if self.key == "pair":
            if isinstance(k, tuple) and k:
                self.unloaded.check(k[0])
        elif self.key == "prefix":
            found = self.unloaded.of_thread(k)
            if found:
                raise MailboxNotLoaded(found)
        elif self.key == "mailbox":
            self.unloaded.check(k)
        else:  # "any": the key names no mailbox
            self.unloaded.check_all()

    def __missing__(self, k: K) -> V:
        self._check(k)
        raise KeyError(k)

    def __bool__(self) -> bool:
        """The loaded mailboxes' part (a fold's shortcut: `_add_message` asks whether any
        parent is missing, which another mailbox's entries do not change; no rule asks)."""
        return dict.__len__(self) > 0

    def get(self, k: K, default: Any = None) -> Any:
        if dict.__contains__(self, k):
            return dict.__getitem__(self, k)
        self._check(k)
        return default

    def __contains__(self, k: object) -> bool:
        if dict.__contains__(self, k):
            return True
        self._check(k)
        return False

    def __iter__(self) -> Iterator[K]:
        self.unloaded.check_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.unloaded.check_all()
        return dict.__len__(self)

    def keys(self) -> Any:
        self.unloaded.check_all()
        return dict.keys(self)

    def values(self) -> Any:
        self.unloaded.check_all()
        return dict.values(self)

    def items(self) -> Any:
        self.unloaded.check_all()
        return dict.items(self)


class LazyMailboxes(ByMailbox[str, Mailbox]):
    """`state.mailboxes`: an unloaded mailbox is neither there nor missing."""

    def __init__(self, unloaded: Unloaded) -> None:
        super().__init__(unloaded, "mailbox")

    def __setitem__(self, mailbox: str, value: Mailbox) -> None:
        self.unloaded.know(mailbox)
        dict.__setitem__(self, mailbox, value)

    def __bool__(self) -> bool:  # (no fold asks: whether there is any is about every one)
        self.unloaded.check_all()
        return dict.__len__(self) > 0


class PairSet(set[tuple[str, str]]):
    """`crm_deleted`: (mailbox, message id) pairs."""

    def __init__(self, unloaded: Unloaded) -> None:
        super().__init__()
        self.unloaded = unloaded

    def __contains__(self, k: object) -> bool:
        if set.__contains__(self, k):
            return True
        if isinstance(k, tuple) and k:
            self.unloaded.check(k[0])
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.unloaded.check_all()
        return set.__iter__(self)

    def __len__(self) -> int:
        self.unloaded.check_all()
        return set.__len__(self)


class LazyMessages(MessageTable):
    """`state.messages`: a message of an unloaded mailbox is neither there nor missing."""

    __slots__ = ("unloaded",)

    def __init__(self, unloaded: Unloaded) -> None:
        super().__init__()
        self.unloaded = unloaded

    def get(self, key: tuple[str, str], default: Message | None = None  # type: ignore[override]
            ) -> Message | None:
        self.unloaded.check(key[0])
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple) and key:
            self.unloaded.check(key[0])
        return super().__contains__(key)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.unloaded.check_all()
        return super().__iter__()

    def __len__(self) -> int:
        self.unloaded.check_all()
        return super().__len__()

    def has_rfc(self, mailbox: str, rfc: str) -> bool:
        self.unloaded.check(mailbox)
        return super().has_rfc(mailbox, rfc)

    def rfc_thread(self, mailbox: str, rfc: str) -> str | None:
        self.unloaded.check(mailbox)
        return super().rfc_thread(mailbox, rfc)

    def box(self, mailbox: str) -> Any:
        self.unloaded.check(mailbox)
        return super().box(mailbox)


class LazyThreads(ThreadTable):
    """`state.threads`: a thread of an unloaded mailbox (its id's prefix) is neither there nor
    missing."""

    __slots__ = ("unloaded",)

    def __init__(self, messages: MessageTable, unloaded: Unloaded) -> None:
        super().__init__(messages)
        self.unloaded = unloaded
        self.by_mailbox = ByMailbox(unloaded, "mailbox")

    def _number(self, thread_id: object) -> int:
        n = super()._number(thread_id)
        if n < 0:  # found, it is its (loaded) mailbox's: thread ids are unique in a state
            found = self.unloaded.of_thread(thread_id)
            if found:
                raise MailboxNotLoaded(found)
        return n

    def __iter__(self) -> Iterator[str]:
        self.unloaded.check_all()
        return super().__iter__()

    def __len__(self) -> int:
        self.unloaded.check_all()
        return super().__len__()

    def of_mailbox(self, mailbox: str) -> list[str]:
        self.unloaded.check(mailbox)
        return super().of_mailbox(mailbox)


def lazy_state(tenant: str) -> TenantState:
    """A command-side state (no message content) whose mailboxes are folded when touched."""
    unloaded = Unloaded()
    messages = LazyMessages(unloaded)
    s = TenantState(tenant, message_content=False, messages=messages)
    s.threads = LazyThreads(messages, unloaded)
    s.mailboxes = LazyMailboxes(unloaded)
    s.missing_parents = ByMailbox(unloaded, "pair")
    s.local_ids = ByMailbox(unloaded, "pair")
    s.sent_provider_ids = ByMailbox(unloaded, "pair")
    s.thread_aliases = ByMailbox(unloaded, "prefix")
    s.outbound = ByMailbox[str, OutboundRequest](unloaded, "any")
    s.crm_deleted = PairSet(unloaded)
    return s


def unloaded(s: TenantState) -> Unloaded | None:
    """The mailboxes `s` has not folded yet; None for a whole state."""
    mailboxes = s.mailboxes
    return mailboxes.unloaded if isinstance(mailboxes, LazyMailboxes) else None


def scope(s: TenantState, event: Folded) -> frozenset[str] | None:
    """The mailboxes whose part of the state `event` folds into (a thread event: every known
    mailbox its threads may belong to); None: tenant-wide only."""
    if type(event) is SyncedMessage:
        return frozenset((event.mailbox,))
    mailbox = getattr(event, "mailbox", None)
    if isinstance(mailbox, str):
        return frozenset((mailbox,))
    if isinstance(event, ev.CommandRejected | ev.DeliveryDeadLettered):
        return None if event.mailbox_id is None else frozenset((event.mailbox_id,))
    waiting = unloaded(s)
    assert waiting is not None, "a lazy state"
    if isinstance(event, ev.ThreadLinked | ev.ThreadUnlinked):
        return waiting.candidates(event.thread) or None
    if isinstance(event, ev.ThreadMarked):
        return frozenset().union(*(waiting.candidates(t) for t in event.threads)) or None
    return None


def _fold_for(s: TenantState, event: Folded, seq: int, mailboxes: frozenset[str] | None
              ) -> bool:
    """`event` folded for `mailboxes` (None: whole); whether anything was. A thread's part is
    folded once every mailbox it may belong to is loaded, by the fold (or the load) of one of
    `mailboxes`, so exactly once; a ThreadMarked may name threads of several mailboxes."""
    if type(event) is SyncedMessage:
        evolve_synced(s, event, seq)
        return True
    assert isinstance(event, ev.DomainEvent)
    if mailboxes is not None:
        waiting = unloaded(s)
        assert waiting is not None

        def ready(thread: str) -> bool:
            found = waiting.candidates(thread)
            return not found & waiting and bool(found & mailboxes)

        if isinstance(event, ev.ThreadLinked | ev.ThreadUnlinked) and not ready(event.thread):
            return False
        if isinstance(event, ev.ThreadMarked):
            mine = [t for t in event.threads if ready(t)]
            if not mine:
                return False
            if len(mine) != len(event.threads):
                event = event.model_copy(update={"threads": mine})
    evolve(s, event, seq)
    return True


def fold_lazily(s: TenantState, event: Folded, seq: int) -> frozenset[str]:
    """Fold `event` (number `seq`) into a lazy state as far as its loaded mailboxes go; the
    unloaded mailboxes it was not folded for."""
    waiting = unloaded(s)
    assert waiting is not None, "a lazy state"
    names = scope(s, event)
    if isinstance(event, ev.MailboxConnected) and not waiting.closed \
            and not dict.__contains__(s.mailboxes, event.mailbox):
        waiting.add(event.mailbox)  # connected while lazy: it waits like the others
    away = frozenset() if names is None else names & waiting
    if not away:
        _fold_for(s, event, seq, None)
        return away
    if isinstance(event, ev.MailboxConnected | ev.MailboxAddressChanged):
        note_address(s, event)  # the tenant-wide part, now (S1, user addresses)
    assert names is not None
    if not (names - away and _fold_for(s, event, seq, names - away)):
        stamp(s, event, seq)  # (E5: a repeated key stays a no-op before the load)
    return away


def load(s: TenantState, mailbox: str, events: Iterable[tuple[int, Folded]]) -> None:
    """Fold `mailbox`'s events (stream order, none after `s.seq`; others' are skipped) into
    `s`, as the whole fold had: the mailbox is loaded afterwards."""
    waiting = unloaded(s)
    assert waiting is not None, "a lazy state"
    if mailbox not in waiting:
        return
    waiting.discard(mailbox)
    seq, last_at, only = s.seq, s.last_at, frozenset((mailbox,))
    for number, event in events:
        assert number <= seq, f"event {number} after the state's {seq}"
        names = scope(s, event)
        if names is not None and mailbox in names:
            _fold_for(s, event, number, only)
    s.seq, s.last_at = seq, last_at
