"""A small office shared by the CLI, HTTP and permission tests: an admin, a manager with one
report, an outsider, Mia's mailbox with one shared mail from a lead."""

from __future__ import annotations

from typing import Any

OFFICE_USERS: list[dict[str, Any]] = [
    {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
    {"cmd": "AddUser", "user": "max", "email": "max@acme.test", "role": "manager"},
    {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member",
     "manager": "max"},
    {"cmd": "AddUser", "user": "ivy", "email": "ivy@acme.test", "role": "member"},
]

OFFICE: list[dict[str, Any]] = [
    *OFFICE_USERS,
    {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "mia", "provider": "gmail",
     "address": "mia@acme.test"},
    {"cmd": "CreateLead", "record": "lead-1", "owner": "mia", "name": "Olga",
     "emails": ["olga@x.test"]},
    {"cmd": "SyncMessage", "mailbox": "mb", "message": {
        "id": "m1", "thread_id": "t1", "from": "olga@x.test", "to": ["mia@acme.test"],
        "subject": "Hello", "body": "hi", "sent_at": "2026-01-01T10:00:00Z", "read": True,
        "delivery_status": "delivered", "labels": ["INBOX"]}},
    {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "lead", "level": "visible"},
]
