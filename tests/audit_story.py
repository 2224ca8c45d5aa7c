"""A small story for the auditor and time-travel tests: two mailboxes, deletions at the
provider (one held by the L5 guard, then confirmed), marks across threads, a manual link and a
user's deletion; one command a minute from histories.T0."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from histories import T0


def msg(mid: str, thread: str, sender: str, to: str, minute: int) -> dict[str, Any]:
    return {"id": mid, "thread_id": thread, "from": sender, "to": [to], "subject": f"S {mid}",
            "body": f"body {mid}", "sent_at": (T0 + timedelta(minutes=minute)).isoformat()}


STORY: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "max", "email": "max@acme.test", "role": "manager"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member",
     "manager": "max"},
    {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member"},
    {"cmd": "ConnectMailbox", "mailbox": "mb1", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mb2", "user": "leo", "provider": "gmail",
     "address": "leo@acme.test"},
    {"cmd": "CreateLead", "record": "l1", "owner": "mia", "name": "L", "emails": ["o@x.test"]},
    {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "lead", "level": "visible"},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a1", "t1", "o@x.test",
                                                            "mia@acme.test", 1)},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a2", "t1", "mia@acme.test",
                                                            "o@x.test", 2)},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a3", "t2", "o@x.test",
                                                            "mia@acme.test", 3)},
    {"cmd": "SyncMessage", "mailbox": "mb2", "message": msg("b1", "t9", "o@x.test",
                                                            "leo@acme.test", 4)},
    {"cmd": "MarkThreadPrivate", "user": "mia", "threads": ["mb1:t2"]},
    {"cmd": "LinkThread", "user": "leo", "thread": "mb2:t9", "record": "l1"},
    {"cmd": "UpdateMessage", "mailbox": "mb1", "id": "a1", "read": True},
    {"cmd": "DeleteMessagesAtProvider", "mailbox": "mb1", "ids": ["a2"]},
    {"cmd": "DeleteMessagesAtProvider", "mailbox": "mb1", "ids": ["a1", "a3"]},  # L5: held
    {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb1", "apply": True},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a4", "t1", "o@x.test",
                                                            "mia@acme.test", 20)},
    {"cmd": "MarkThreadShared", "user": "mia", "threads": ["mb1:t1", "mb1:t2"]},
    {"cmd": "DeleteUser", "user": "leo"},
]
