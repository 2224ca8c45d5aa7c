"""The outbound port: what the outbox worker asks of a mail provider (issue #4 item 5, S7, S12).

Adapters: `adapters.providers.gmail.outbound.GmailOutbound` (Gmail API v1),
`adapters.providers.graph.outbound. GraphOutbound` (Microsoft Graph v1.0),
`adapters.providers.imap.outbound.ImapOutbound` (IMAP flags and folders, SMTP submission), and
`MemoryOutbound` here, the hand-written fake. All pass the same contract tests (`tests/integration/test_outbound_contract.py`).

- `send(mailbox, message)` hands one RFC 5322 message to the provider and returns its ids as far
  as the provider tells them (`Sent.provider_id` may be None: Graph files sent mail later).
- `find_sent(mailbox, rfc_message_id)`: the sent copy of the message with that Message-ID, or
  None. The worker asks before every send, so a crash between "provider accepted" and "ack
  recorded" never sends twice.
- `trash(mailbox, provider_id)` / `set_read(mailbox, provider_id, read)`: True when done, False
  when the provider no longer has the message (nothing left to do: not an error).

Errors are the `adapters.errors` types (`ProviderError` and subclasses); credentials never appear
in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Protocol

from adapters.errors import ProviderError


@dataclass(frozen=True)
class OutboundMessage:
    """A CRM-sent message as the provider must receive it."""

    message_id: str  # RFC 5322 Message-ID with angle brackets
    from_: str
    to: tuple[str, ...]
    subject: str
    body: str
    sent_at: datetime
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    provider_thread_id: str | None = None  # Gmail: the thread to file it in

    def recipients(self) -> list[str]:
        return list(dict.fromkeys([*self.to, *self.cc]))

    def rfc822(self) -> bytes:
        """The message as RFC 5322 bytes (CRLF line ends, UTF-8 body, encoded headers)."""
        mail = EmailMessage(policy=SMTP)
        mail["Message-ID"] = self.message_id
        mail["Date"] = format_datetime(self.sent_at)
        mail["From"] = self.from_
        mail["To"] = ", ".join(self.to)
        if self.cc:
            mail["Cc"] = ", ".join(self.cc)
        mail["Subject"] = self.subject
        if self.in_reply_to:
            mail["In-Reply-To"] = self.in_reply_to
        if self.references:
            mail["References"] = " ".join(self.references)
        mail.set_content(self.body)
        return mail.as_bytes()


@dataclass(frozen=True)
class Sent:
    provider_id: str | None
    provider_thread_id: str | None = None


class OutboundClient(Protocol):
    def send(self, mailbox_address: str, message: OutboundMessage) -> Sent: ...

    def find_sent(self, mailbox_address: str, rfc_message_id: str) -> Sent | None: ...

    def trash(self, mailbox_address: str, provider_id: str) -> bool: ...

    def set_read(self, mailbox_address: str, provider_id: str, read: bool) -> bool: ...

    def close(self) -> None: ...


@dataclass
class StoredMessage:
    raw: bytes
    message_id: str
    thread_id: str
    read: bool = True
    trashed: bool = False


@dataclass
class MemoryOutbound:
    """The fake provider: messages per mailbox in memory. `failures` makes the next calls raise
    (a list of exceptions, taken in order); `visible_after_send=False` mimics Graph, which files
    the sent copy only later (send returns no id, find_sent finds nothing until `file_sent`)."""

    mailboxes: dict[str, dict[str, StoredMessage]] = field(default_factory=dict)
    failures: list[ProviderError] = field(default_factory=list)
    visible_after_send: bool = True
    sends: list[tuple[str, str]] = field(default_factory=list)  # (mailbox, Message-ID) per send
    _unfiled: list[tuple[str, str, StoredMessage]] = field(default_factory=list)
    _next: int = 0

    def _fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def add(self, mailbox: str, provider_id: str, message_id: str, read: bool = False) -> None:
        """A message that arrived at the provider by other means."""
        self.mailboxes.setdefault(mailbox, {})[provider_id] = StoredMessage(
            b"", message_id, f"t-{provider_id}", read)

    def send(self, mailbox_address: str, message: OutboundMessage) -> Sent:
        self._fail()
        self._next += 1
        pid = f"mem-{self._next}"
        thread = message.provider_thread_id or f"thread-{self._next}"
        stored = StoredMessage(message.rfc822(), message.message_id, thread)
        self.sends.append((mailbox_address, message.message_id))
        if not self.visible_after_send:
            self._unfiled.append((mailbox_address, pid, stored))
            return Sent(None)
        self.mailboxes.setdefault(mailbox_address, {})[pid] = stored
        return Sent(pid, thread)

    def file_sent(self) -> None:
        """Graph-like: the sent copies appear now."""
        for mailbox, pid, stored in self._unfiled:
            self.mailboxes.setdefault(mailbox, {})[pid] = stored
        self._unfiled = []

    def find_sent(self, mailbox_address: str, rfc_message_id: str) -> Sent | None:
        self._fail()
        for pid, stored in self.mailboxes.get(mailbox_address, {}).items():
            if stored.message_id == rfc_message_id and not stored.trashed:
                return Sent(pid, stored.thread_id)
        return None

    def _get(self, mailbox: str, provider_id: str) -> StoredMessage | None:
        stored = self.mailboxes.get(mailbox, {}).get(provider_id)
        return None if stored is None or stored.trashed else stored

    def trash(self, mailbox_address: str, provider_id: str) -> bool:
        self._fail()
        stored = self._get(mailbox_address, provider_id)
        if stored is None:
            return False
        stored.trashed = True
        return True

    def set_read(self, mailbox_address: str, provider_id: str, read: bool) -> bool:
        self._fail()
        stored = self._get(mailbox_address, provider_id)
        if stored is None:
            return False
        stored.read = read
        return True

    def is_read(self, mailbox_address: str, provider_id: str) -> bool | None:
        stored = self._get(mailbox_address, provider_id)
        return None if stored is None else stored.read

    def close(self) -> None:
        pass
