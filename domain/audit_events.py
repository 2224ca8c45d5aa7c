"""Events that audit input: rejected commands, no-ops kept for idempotency (E5), recorded
commands."""

from __future__ import annotations

from typing import Any

from domain.event_base import DomainEvent

__all__ = [
    "CommandHadNoEffect", "CommandRejected", "ContactSyncCommandRecorded",
]


# --- audit of input -------------------------------------------------------------------------


class CommandRejected(DomainEvent):
    cmd: str
    field: str
    reason: str
    # the known mailbox of a rejected mailbox command (its sync status counts it); not `mailbox`:
    # most rejections have none
    mailbox_id: str | None = None


class CommandHadNoEffect(DomainEvent):
    """A command with a `command_id` that changed nothing: remembered so that a re-application
    stays a no-op whatever happened since (E5)."""

    cmd: str


class ContactSyncCommandRecorded(DomainEvent):
    """Contact-sync commands (SPEC §5) are recorded; their behaviour arrives with contact sync."""

    cmd: str
    payload: dict[str, Any]


EVENTS: tuple[type[DomainEvent], ...] = (
    CommandRejected, CommandHadNoEffect, ContactSyncCommandRecorded,
)
