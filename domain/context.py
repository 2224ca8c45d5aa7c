"""What every decision needs: the command's envelope (E2) and helpers to build events and look
ids up with the error that SPEC §6 asks for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from domain import events as ev
from domain.errors import Rejection
from domain.state import Mailbox, Record, TenantState, Thread, User

E = TypeVar("E", bound=ev.DomainEvent)


@dataclass(frozen=True)
class Context:
    state: TenantState
    cmd: str
    actor: str
    occurred_at: datetime
    correlation_id: str
    command_id: str | None

    def event(self, cls: type[E], **fields: Any) -> E:
        return cls(tenant=self.state.tenant, actor=self.actor, occurred_at=self.occurred_at,
                   correlation_id=self.correlation_id, command_id=self.command_id, **fields)

    def reject(self, field: str, reason: str) -> Rejection:
        return Rejection(self.cmd, field, reason)

    def user(self, user_id: str, field: str = "user", *, active: bool = False) -> User:
        user = self.state.users.get(user_id)
        if user is None:
            raise self.reject(field, f"unknown user {user_id!r}")
        if user.status == "deleted":
            raise self.reject(field, f"user {user_id!r} is deleted")
        if active and not user.active:
            raise self.reject(field, f"user {user_id!r} is {user.status}")
        return user

    def record(self, record_id: str, field: str = "record", *, type_: str | None = None) -> Record:
        record = self.state.records.get(record_id)
        if record is None:
            raise self.reject(field, f"unknown record {record_id!r}")
        if type_ is not None and record.type != type_:
            raise self.reject(field, f"record {record_id!r} is a {record.type}, not a {type_}")
        return record

    def mailbox(self, mailbox_id: str, field: str = "mailbox") -> Mailbox:
        mailbox = self.state.mailboxes.get(mailbox_id)
        if mailbox is None:
            raise self.reject(field, f"unknown mailbox {mailbox_id!r}")
        return mailbox

    def thread(self, thread_id: str, field: str = "thread") -> Thread:
        thread = self.state.threads.get(thread_id)
        if thread is None:
            raise self.reject(field, f"unknown thread {thread_id!r}")
        return thread
