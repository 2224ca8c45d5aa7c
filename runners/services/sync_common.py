"""What a sync worker and its push channels share: the mailbox locks (one worker per mailbox at
a time), the outcome of a delivery, and the sync service's commands."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from domain import commands as c
from runners.services.mail_directory import MailboxRef

ACTOR = "system:sync"


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


C = TypeVar("C", bound=c.Command)


def sync_command(cls: type[C], ref: MailboxRef, **fields: Any) -> C:
    """A sync command for `ref`'s mailbox, issued by the sync service."""
    return cls.model_validate({"cmd": cls.__name__, "tenant": ref.tenant, "actor": ACTOR,
                               "mailbox": ref.mailbox, **fields})


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
