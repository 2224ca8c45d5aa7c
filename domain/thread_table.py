"""The threads of a tenant as rows of columns, no Python object per thread (pure; issue #15).

`ThreadTable` is a mapping `thread id -> Thread` read as the dict of `Thread` objects it
replaced: a `Thread` is a view of one row that reads and writes the table, made when asked for.
A thread's number is its id's number in the tenant's thread ids (`Codec.thread_ids`, given when
the fold creates the thread, so iteration is in creation order). Its columns: the mailbox's
number, the creating event's seq, CRM-initiated, its participants (address numbers, `Records`)
and its last message's row; the messages of a thread are chained row to row in their mailbox's
box (`Box.prev`). The rare parts (V1 flag, manual links) are dicts by number.

A thread whose message cannot be chained (a message of another mailbox, or one already in a
thread: a history no rule writes today) keeps its message ids as a list instead, so the fold
still answers what it answered before.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from domain.message_table import Message, MessageTable
from domain.packing import Records, read_varint

if TYPE_CHECKING:
    from domain.tenant import EventRef

_THREAD, _CRM = 1, 2


class Thread:
    """One thread, read from and written to its table."""

    __slots__ = ("id", "number", "table")

    def __init__(self, table: ThreadTable, number: int, thread_id: str) -> None:
        self.table, self.number, self.id = table, number, thread_id

    @property
    def mailbox(self) -> str:
        return self.table.codec.names.values[self.table.mailbox[self.number]]

    @property
    def created_seq(self) -> int:
        return self.table.created[self.number]

    @property
    def crm_initiated(self) -> bool:
        return bool(self.table.kind[self.number] & _CRM)

    @property
    def flag(self) -> tuple[bool, EventRef] | None:
        """V1: (shared?, event)."""
        return self.table.flags.get(self.number)

    @flag.setter
    def flag(self, value: tuple[bool, EventRef] | None) -> None:
        if value is None:
            self.table.flags.pop(self.number, None)
        else:
            self.table.flags[self.number] = value

    @property
    def manual(self) -> dict[str, tuple[bool, EventRef]] | None:
        """record -> linked? (None: none); the dict is the table's (changed in place)."""
        return self.table.manual.get(self.number)

    @manual.setter
    def manual(self, value: dict[str, tuple[bool, EventRef]] | None) -> None:
        if value is None:
            self.table.manual.pop(self.number, None)
        else:
            self.table.manual[self.number] = value

    @property
    def participants(self) -> tuple[str, ...]:
        """The distinct addresses of its live messages, in order of arrival."""
        return self.table.participants(self.number)

    @participants.setter
    def participants(self, value: tuple[str, ...]) -> None:
        self.table.set_participants(self.number, value)

    @property
    def messages(self) -> list[str]:
        """Provider message ids in arrival order."""
        table = self.table
        listed = table.listed.get(self.number)
        if listed is not None:
            return list(listed)
        last = table.last[self.number]
        box = table.messages.box(self.mailbox)
        return [] if last < 0 or box is None else [box.id(r) for r in box.chain(last)]

    def stored(self) -> list[Message]:
        """Its messages in arrival order, as `messages` lists them (read row by row when they
        are chained: no lookup by id)."""
        table = self.table
        listed = table.listed.get(self.number)
        if listed is not None:
            return [table.messages[(self.mailbox, m)] for m in listed]
        last = table.last[self.number]
        box = table.messages.box(self.mailbox)
        return [] if last < 0 or box is None else [box.message(r) for r in box.chain(last)]

    def add_message(self, message_id: str) -> None:
        """Append a message (stored already in the table's messages)."""
        table, n = self.table, self.number
        box = table.messages.box(self.mailbox)
        row = -1 if box is None else table.messages.row(self.mailbox, message_id)
        if n not in table.listed and row >= 0 and box is not None and box.prev[row] == -2:
            box.prev[row] = table.last[n]
            table.last[n] = row
        else:
            table.listed[n] = [*self.messages, message_id]

    def _value(self) -> tuple[object, ...]:
        return (self.id, self.mailbox, self.created_seq, self.messages, self.flag, self.manual,
                self.crm_initiated, self.participants)

    def __eq__(self, other: object) -> bool:
        """Equal content, whichever table holds it (as the dataclass it replaced: a state
        restored from a snapshot equals the one folded from the log)."""
        return isinstance(other, Thread) and self._value() == other._value()

    __hash__ = None  # type: ignore[assignment]  # changes in place: not a key

    def __repr__(self) -> str:
        return f"Thread({self.id!r}, {self.mailbox!r}, {self.created_seq})"


class ThreadTable(Mapping[str, Thread]):
    """`thread id -> Thread` over columns indexed by thread number."""

    __slots__ = ("by_mailbox", "codec", "count", "created", "flags", "kind", "last", "listed",
                 "mailbox", "manual", "messages", "people", "read_last")

    def __init__(self, messages: MessageTable) -> None:
        self.messages = messages
        self.codec = messages.codec
        self.kind = bytearray()  # 0: a number of no thread (yet); _THREAD, | _CRM
        self.mailbox = array("I")
        self.created = array("q")
        self.last = array("i")  # the row of its last chained message (-1: none)
        self.people = Records()
        self.flags: dict[int, tuple[bool, EventRef]] = {}
        self.manual: dict[int, dict[str, tuple[bool, EventRef]]] = {}
        self.listed: dict[int, list[str]] = {}
        self.by_mailbox: dict[str, array[int]] = {}  # mailbox -> its threads in creation order
        self.count = 0
        # the participants read or written last: (thread number, them); only `participants`
        # writes a thread's participants, so this is never stale
        self.read_last: tuple[int, tuple[str, ...]] = (-1, ())

    def create(self, thread_id: str, mailbox: str, seq: int, crm_initiated: bool) -> Thread:
        n = self.codec.thread_ids.number(thread_id)
        self._create(n, thread_id, mailbox, seq, crm_initiated)
        return Thread(self, n, thread_id)

    def _create(self, n: int, thread_id: str, mailbox: str, seq: int, crm_initiated: bool
                ) -> None:
        """`create` of the thread whose id is numbered `n`."""
        while len(self.kind) <= n:
            self.kind.append(0)
            self.mailbox.append(0)
            self.created.append(0)
            self.last.append(-1)
        if self.kind[n]:
            raise ValueError(f"thread {thread_id!r} exists")
        self.kind[n] = _THREAD | (_CRM if crm_initiated else 0)
        self.mailbox[n] = self.codec.names.number(mailbox)
        self.created[n] = seq
        threads = self.by_mailbox.get(mailbox)
        if threads is None:  # (not `setdefault`: it made an array for every thread)
            threads = self.by_mailbox[mailbox] = array("I")
        threads.append(n)
        self.count += 1

    def add_synced(self, mailbox: str, message_id: str, thread_id: str, seq: int,
                   crm_initiated: bool, rfc_id: str | None, participants: tuple[str, ...],
                   subject: str, sent_at: str, labels: tuple[str, ...], read: bool,
                   delivery_status: str | None, index_rfc: bool) -> int:
        """The fold of a synced message in one go: its thread found (created if need be), the
        message stored, chained after the thread's last row and indexed under its RFC
        Message-ID (S13) when `index_rfc`; the thread's number. (It runs for every message
        of a tenant's history: this is `get`/`create`, `MessageTable.put`, `index_rfc` and
        `Thread.add_message` with the thread's columns read once.)"""
        # the thread's number: `get` then `create` would look a new thread's id up twice (a
        # thread's messages mostly come in a row: `TextRows.last`, checked without a call)
        thread_ids = self.codec.thread_ids
        last = thread_ids.last
        n = last[1] if last[0] == thread_id and last[1] >= 0 else thread_ids.number(thread_id)
        if n >= len(self.kind) or not self.kind[n]:
            self._create(n, thread_id, mailbox, seq, crm_initiated)
        # chained if the thread is of this mailbox and lists no ids (as `Thread.add_message`)
        chains = self.mailbox[n] == self.codec.names.numbers.get(mailbox) \
            and n not in self.listed
        row = self.messages.add(mailbox, message_id, n, rfc_id, participants, subject,
                                sent_at, labels, read, delivery_status,
                                self.last[n] if chains else -2, index_rfc)
        if chains and row >= 0:
            self.last[n] = row
        else:  # stored already, or not chained: as it was
            Thread(self, n, thread_id).add_message(message_id)
        return n

    def participants(self, n: int) -> tuple[str, ...]:
        """`Thread.participants` of the thread numbered `n`."""
        if self.read_last[0] == n:  # the rules ask for one thread's several times
            return self.read_last[1]
        people = self.people
        if n >= len(people.at) or people.at[n] < 0:
            return ()
        data, (at, end) = people.data, people.body(n)
        names, out = self.codec.names.values, []
        while at < end:
            k, at = read_varint(data, at)
            out.append(names[k])
        self.read_last = (n, tuple(out))
        return self.read_last[1]

    def set_participants(self, n: int, value: tuple[str, ...]) -> None:
        names = self.codec.names
        codes, code = names.codes, names.code
        self.people.put(n, b"".join([codes.get(a) or code(a) for a in value]))
        self.read_last = (n, tuple(value))

    def join(self, n: int, participants: tuple[str, ...]) -> None:
        """Add the addresses of a new message not among the thread's participants yet."""
        read_last = self.read_last  # (most often this thread's: checked without a call)
        have = read_last[1] if read_last[0] == n else self.participants(n)
        new = [a for a in participants if a not in have]
        if new:
            self.set_participants(n, have + tuple(new))

    def _number(self, thread_id: object) -> int:
        if not isinstance(thread_id, str):
            return -1
        n = self.codec.thread_ids.find(thread_id)
        return n if 0 <= n < len(self.kind) and self.kind[n] else -1

    def get(self, thread_id: str, default: Thread | None = None  # type: ignore[override]
            ) -> Thread | None:
        n = self._number(thread_id)
        return default if n < 0 else Thread(self, n, thread_id)

    def __getitem__(self, thread_id: str) -> Thread:
        n = self._number(thread_id)
        if n < 0:
            raise KeyError(thread_id)
        return Thread(self, n, thread_id)

    def __contains__(self, thread_id: object) -> bool:
        return self._number(thread_id) >= 0

    def __iter__(self) -> Iterator[str]:
        text, kind = self.codec.thread_ids.text, self.kind
        for n in range(len(kind)):
            if kind[n]:
                yield text(n)

    def __len__(self) -> int:
        return self.count

    def of_mailbox(self, mailbox: str) -> list[str]:
        text = self.codec.thread_ids.text
        return [text(n) for n in self.by_mailbox.get(mailbox, ())]

    def __repr__(self) -> str:
        return f"ThreadTable({self.count} threads)"


class MailboxThreads:
    """`mailbox -> [thread id]` in creation order, read as the dict it replaced."""

    __slots__ = ("table",)

    def __init__(self, table: ThreadTable) -> None:
        self.table = table

    def get(self, mailbox: str, default: Any = None) -> Any:
        return self.table.of_mailbox(mailbox) if mailbox in self.table.by_mailbox else default

    def __getitem__(self, mailbox: str) -> list[str]:
        if mailbox not in self.table.by_mailbox:
            raise KeyError(mailbox)
        return self.table.of_mailbox(mailbox)

    def __contains__(self, mailbox: object) -> bool:
        return mailbox in self.table.by_mailbox
