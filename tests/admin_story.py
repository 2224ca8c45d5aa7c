"""A tenant with one of each problem for the admin queries and pages (issue #14): a suspect
mailbox holding three deletions (L5), a gone one (L4), a disconnected one (S10), a mailbox whose
credentials the provider refused, two open dead letters and one replayed, an address setting,
a configured tenant and a deactivated admin; one command a minute from histories.T0. A dead
letter's error carries markup, which every page must show as text."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from histories import T0

MARKUP = "<script>alert(1)</script>"


def msg(mid: str, thread: str, sender: str, to: str, minute: int) -> dict[str, Any]:
    return {"id": mid, "thread_id": thread, "from": sender, "to": [to], "subject": f"S {mid}",
            "body": f"body {mid}", "sent_at": (T0 + timedelta(minutes=minute)).isoformat()}


STORY: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "max", "email": "max@acme.test", "role": "manager"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member",
     "manager": "max"},
    {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member"},
    {"cmd": "AddUser", "user": "ivy", "email": "ivy@acme.test", "role": "admin"},
    {"cmd": "ConfigureTenant", "bcc_address": "drop@acme.test", "mass_delete_threshold": 0.5},
    {"cmd": "ConnectMailbox", "mailbox": "mb1", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mb2", "user": "leo", "provider": "outlook",
     "address": "leo@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mb3", "user": "max", "provider": "imap",
     "address": "max@acme.test"},
    {"cmd": "ConnectMailbox", "mailbox": "mb4", "user": "ada", "provider": "gmail",
     "address": "ada@acme.test"},
    {"cmd": "CreateLead", "record": "l1", "owner": "mia", "name": "L", "emails": ["o@x.test"]},
    {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "lead", "level": "visible"},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a1", "t1", "o@x.test",
                                                            "mia@acme.test", 12)},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a2", "t1", "mia@acme.test",
                                                            "o@x.test", 13)},
    {"cmd": "SyncMessage", "mailbox": "mb1", "message": msg("a3", "t2", "o@x.test",
                                                            "mia@acme.test", 14)},
    {"cmd": "MarkThreadPrivate", "user": "mia", "threads": ["mb1:t1"]},
    {"cmd": "ShareAddress", "user": "mia", "record": "l1", "address": "o@x.test"},
    {"cmd": "MarkThreadShared", "user": "mia", "threads": ["mb1:t1"]},
    {"cmd": "DeleteMessagesAtProvider", "mailbox": "mb1", "ids": ["a1", "a2", "a3"]},  # L5
    {"cmd": "ReportMailboxGone", "mailbox": "mb2"},
    {"cmd": "DisconnectMailbox", "mailbox": "mb3"},
    {"cmd": "RecordDeadLetter", "dead_letter_id": "dl-1", "provider": "gmail",
     "delivery_id": "d1", "mailbox": "mb4", "attempts": 5, "error": f"ProviderError: {MARKUP}"},
    {"cmd": "RecordDeadLetter", "dead_letter_id": "dl-2", "provider": "gmail",
     "delivery_id": "d2", "mailbox": "mb4", "attempts": 1,
     "error": "CredentialsRejected: the token endpoint refused the refresh token"},
    {"cmd": "RecordDeadLetter", "dead_letter_id": "dl-3", "provider": "outlook",
     "delivery_id": "d3", "attempts": 5, "error": "ProviderError: 503"},
    {"cmd": "RecordDeadLetterReplay", "dead_letter_id": "dl-3", "delivery_id": "d3"},
    {"cmd": "DeactivateUser", "user": "ivy"},
]
END = T0 + timedelta(minutes=len(STORY))


def lines(tenant: str = "acme") -> list[bytes]:
    return [orjson.dumps({"tenant": tenant, "at": (T0 + timedelta(minutes=i)).isoformat(), **c})
            for i, c in enumerate(STORY)]
