"""IMAP writes for the outbox (the `OutboundClient` port): flags and folders over IMAP, sending
over SMTP submission (IMAP itself cannot send).

- send: APPEND the message to the Sent folder (created when missing) flagged `\\Seen` and the
  keyword `$CrmsyncUnsent`, submit it over SMTP, then remove the keyword. Provider id
  `Sent/<uidvalidity>/<uid>` from APPENDUID (UIDPLUS), the same id the sync reads the Sent
  folder with, so the synced copy maps onto the `crm-N` message.
- find_sent: `UID SEARCH HEADER Message-ID <id>` in the Sent folder. A copy still carrying
  `$CrmsyncUnsent` was appended but perhaps never submitted (a crash in between): it is submitted
  now and the keyword removed. The only window for a double send is between an SMTP submission
  and the STORE that removes the keyword (at-least-once there, never lost).
- trash: `UID STORE +FLAGS \\Deleted` and `UID EXPUNGE` of that UID only (UIDPLUS; without it
  the message stays flagged, since a plain EXPUNGE would take every `\\Deleted` message), in the
  message's folder, if its UIDVALIDITY is still the id's.
- set_read: `UID STORE ±FLAGS \\Seen`.

One connection per call (the outbox is not chatty). Errors: `ProviderError` / `MailboxGone` as
in `adapters.providers.imap.client`; SMTP failures are `ProviderError` without the password.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email import message_from_bytes
from email.utils import getaddresses
from typing import Any

from adapters.errors import ProviderError
from adapters.providers.imap.client import ImapAccount, ImapClient, provider_id
from adapters.providers.outbound import OutboundMessage, Sent

UNSENT = b"$CrmsyncUnsent"
_SEEN = b"\\Seen"
_APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)")

Submit = Callable[[bytes, str, list[str]], None]


@dataclass(frozen=True)
class SmtpSubmission:
    """SMTP submission (RFC 6409): STARTTLS on 587 by default, `ssl` on 465, `none` for
    loopback tests; logs in with the mailbox's user and password."""

    host: str
    port: int = 587
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    tls: str = "starttls"  # starttls | ssl | none
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def __call__(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        where = f"{self.host}:{self.port}"
        try:
            smtp: smtplib.SMTP
            if self.tls == "ssl":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=self.ssl_context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.tls == "starttls":
                    smtp.starttls(context=self.ssl_context)
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.sendmail(sender, recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ProviderError("imap", f"SMTP {where} refused every recipient "
                                f"({len(exc.recipients)})", 550) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            raise ProviderError("imap", f"SMTP {where}: {exc.smtp_code} "
                                f"{text.replace(self.password, '***') if self.password else text}",
                                exc.smtp_code) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ProviderError("imap", f"SMTP {where}: {type(exc).__name__}") from None


def _message_id_of(item: dict[bytes, Any]) -> str | None:
    for key, value in item.items():
        if key.startswith(b"BODY[HEADER.FIELDS") and isinstance(value, bytes):
            found = message_from_bytes(value).get("Message-ID")
            return str(found).strip() if found is not None else None
    return None


class ImapOutbound:
    def __init__(self, account: ImapAccount, submit: Submit, *, sent_folder: str = "Sent"
                 ) -> None:
        self.account = account
        self.submit = submit
        self.sent_folder = sent_folder

    def close(self) -> None:
        pass

    @contextmanager
    def _selected(self, folder: str) -> Iterator[tuple[ImapClient, Any, int]]:
        """A session with `folder` selected read-write: (client, connection, UIDVALIDITY)."""
        with ImapClient.connect(self.account) as client:
            conn = client._conn
            info = client._call(folder, lambda: conn.select_folder(folder))
            try:
                yield client, conn, int(info[b"UIDVALIDITY"])
            finally:
                with suppress(Exception):
                    conn.close_folder()

    def _ensure_sent_folder(self, client: ImapClient) -> None:
        conn = client._conn
        folder = self.sent_folder
        if not client._call(folder, lambda: conn.folder_exists(folder)):
            client._call(folder, lambda: conn.create_folder(folder))

    def send(self, mailbox_address: str, message: OutboundMessage) -> Sent:
        raw = message.rfc822()
        folder = self.sent_folder
        with ImapClient.connect(self.account) as client:
            self._ensure_sent_folder(client)
            conn = client._conn
            answer = client._call(folder, lambda: conn.append(
                folder, raw, flags=[_SEEN, UNSENT], msg_time=message.sent_at))
        found = _APPENDUID.search(answer if isinstance(answer, bytes) else b"")
        self.submit(raw, message.from_, message.recipients())
        if found is None:  # no UIDPLUS: look the copy up
            sent = self.find_sent(mailbox_address, message.message_id, resubmit=False)
            return sent or Sent(None)
        uidvalidity, uid = int(found.group(1)), int(found.group(2))
        with self._selected(folder) as (client, conn, current):
            if current == uidvalidity:
                client._call(folder, lambda: conn.remove_flags([uid], [UNSENT]))
        return Sent(provider_id(folder, uidvalidity, uid))

    def find_sent(self, mailbox_address: str, rfc_message_id: str, *, resubmit: bool = True
                  ) -> Sent | None:
        folder = self.sent_folder
        with ImapClient.connect(self.account) as client:
            conn = client._conn
            if not client._call(folder, lambda: conn.folder_exists(folder)):
                return None
        with self._selected(folder) as (client, conn, uidvalidity):
            uids = sorted(client._call(folder, lambda: conn.search(
                ["HEADER", "Message-ID", rfc_message_id])))  # a substring match: check exactly
            if not uids:
                return None
            header = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"
            items = client._call(folder, lambda: conn.fetch(uids, ["FLAGS", header]))
            exact = [u for u in uids if _message_id_of(items.get(u, {})) == rfc_message_id]
            if not exact:
                return None
            uid = int(exact[0])
            if resubmit and UNSENT in items[uid].get(b"FLAGS", ()):
                fetched = client._call(folder, lambda: conn.fetch([uid], ["BODY.PEEK[]"]))
                raw = fetched.get(uid, {}).get(b"BODY[]", b"")
                parsed = message_from_bytes(raw)
                sender = getaddresses(parsed.get_all("From", []))
                rcpts = [a for _, a in getaddresses(parsed.get_all("To", [])
                                                     + parsed.get_all("Cc", [])) if a]
                self.submit(raw, sender[0][1] if sender else "", rcpts)
                client._call(folder, lambda: conn.remove_flags([uid], [UNSENT]))
            return Sent(provider_id(folder, uidvalidity, uid))

    def _locate(self, pid: str) -> tuple[str, int, int] | None:
        parts = pid.rsplit("/", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return parts[0], int(parts[1]), int(parts[2])

    def _with_message(self, pid: str, action: Callable[[ImapClient, Any, str, int], None]
                      ) -> bool:
        where = self._locate(pid)
        if where is None:
            raise ProviderError("imap", f"not an IMAP provider id: {pid!r}")
        folder, uidvalidity, uid = where
        with ImapClient.connect(self.account) as client:
            conn = client._conn
            if not client._call(folder, lambda: conn.folder_exists(folder)):
                return False
        with self._selected(folder) as (client, conn, current):
            if current != uidvalidity:
                return False  # the folder was recreated: that message is gone
            if not client._call(folder, lambda: conn.search(["UID", str(uid)])):
                return False
            action(client, conn, folder, uid)
            return True

    def trash(self, mailbox_address: str, provider_id: str) -> bool:
        def expunge(client: ImapClient, conn: Any, folder: str, uid: int) -> None:
            client._call(folder, lambda: conn.add_flags([uid], [b"\\Deleted"]))
            if conn.has_capability("UIDPLUS"):  # without it, EXPUNGE would take every
                client._call(folder, lambda: conn.expunge([uid]))  # \Deleted message

        return self._with_message(provider_id, expunge)

    def set_read(self, mailbox_address: str, provider_id: str, read: bool) -> bool:
        def flag(client: ImapClient, conn: Any, folder: str, uid: int) -> None:
            change = conn.add_flags if read else conn.remove_flags
            client._call(folder, lambda: change([uid], [_SEEN]))

        return self._with_message(provider_id, flag)
