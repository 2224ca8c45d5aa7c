"""SMTP submission for IMAP mailboxes (S7) against a small SMTP server on loopback (EHLO, AUTH
PLAIN, MAIL, RCPT, DATA, QUIT — the part of RFC 5321/4954 smtplib speaks here): the message
arrives once with its envelope, refusals are `ProviderError` with the code, the password never
appears; and the IMAP adapter sends through it and files the copy in Sent (Dovecot)."""

from __future__ import annotations

import base64
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import imapclient  # type: ignore[import-untyped]
import pytest
from dovecot import DovecotServer, ensure_dovecot

from adapters.errors import ProviderError
from adapters.providers.imap.client import ImapAccount
from adapters.providers.imap.outbound import ImapOutbound, SmtpSubmission
from adapters.providers.outbound import OutboundMessage

pytestmark = pytest.mark.integration

PASSWORD = "smtp-Secret-pa55"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SmtpState:
    received: list[Received] = field(default_factory=list)
    refuse_recipients: set[str] = field(default_factory=set)
    logins: list[str] = field(default_factory=list)


class SmtpServer:
    def __init__(self) -> None:
        self.state = SmtpState()
        state = self.state

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 test ESMTP")
                sender, rcpts = "", []
                while line := self.rfile.readline():
                    verb = line.decode().strip()
                    upper = verb.upper()
                    if upper.startswith(("EHLO", "HELO")):
                        self.wfile.write(b"250-test\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
                    elif upper.startswith("AUTH PLAIN"):
                        _, user, password = base64.b64decode(verb.split()[2]).split(b"\0")
                        ok = password.decode() == PASSWORD
                        state.logins.append(user.decode())
                        self.reply("235 ok" if ok else "535 5.7.8 bad credentials")
                    elif upper.startswith("MAIL FROM:"):
                        sender, rcpts = verb[10:].split()[0].strip("<>"), []
                        self.reply("250 ok")
                    elif upper.startswith("RCPT TO:"):
                        rcpt = verb[8:].split()[0].strip("<>")
                        if rcpt in state.refuse_recipients:
                            self.reply("550 5.1.1 no such user")
                        else:
                            rcpts.append(rcpt)
                            self.reply("250 ok")
                    elif upper == "DATA":
                        self.reply("354 go on")
                        lines = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                        state.received.append(Received(sender, rcpts, b"".join(lines)))
                        self.reply("250 queued")
                    elif upper == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.close()


def message(n: int) -> OutboundMessage:
    return OutboundMessage(message_id=f"<crm-{n}.acme@crmsync.invalid>", from_="mia@acme.test",
                           to=("carla@customer.test",), cc=("cc@customer.test",),
                           subject="Offer", body="Hello Carla\n.leading dot\n",
                           sent_at=datetime(2026, 1, 5, 9, tzinfo=UTC))


def test_s7_submission_delivers_once_with_its_envelope(smtp: SmtpServer) -> None:
    submit = SmtpSubmission("127.0.0.1", smtp.port, "mia", PASSWORD, tls="none")
    raw = message(1).rfc822()
    submit(raw, "mia@acme.test", message(1).recipients())
    [got] = smtp.state.received
    assert got.sender == "mia@acme.test"
    assert got.recipients == ["carla@customer.test", "cc@customer.test"]
    assert got.data == raw  # dot-stuffing undone: byte for byte
    assert smtp.state.logins == ["mia"]


def test_s7_refusals_are_provider_errors_without_the_password(smtp: SmtpServer) -> None:
    smtp.state.refuse_recipients = {"carla@customer.test", "cc@customer.test"}
    submit = SmtpSubmission("127.0.0.1", smtp.port, "mia", PASSWORD, tls="none")
    with pytest.raises(ProviderError) as refused:
        submit(message(2).rfc822(), "mia@acme.test", message(2).recipients())
    assert refused.value.status == 550 and smtp.state.received == []
    wrong = SmtpSubmission("127.0.0.1", smtp.port, "mia", "wrong-" + PASSWORD, tls="none")
    with pytest.raises(ProviderError) as denied:
        wrong(message(3).rfc822(), "mia@acme.test", ["x@customer.test"])
    assert denied.value.status == 535
    for exc in (refused.value, denied.value):
        assert PASSWORD not in str(exc) and exc.__cause__ is None
    closed = SmtpSubmission("127.0.0.1", 1, tls="none", timeout=2)
    with pytest.raises(ProviderError):
        closed(message(4).rfc822(), "mia@acme.test", ["x@customer.test"])


def test_s7_imap_mailbox_sends_over_smtp_and_files_the_copy_in_sent(smtp: SmtpServer) -> None:
    ensure_dovecot()
    dovecot = DovecotServer()
    dovecot.add_user("mia", PASSWORD)
    dovecot.start()
    try:
        account = ImapAccount(dovecot.host, dovecot.port, "mia", PASSWORD, tls="none")
        client = ImapOutbound(account, SmtpSubmission("127.0.0.1", smtp.port, "mia", PASSWORD,
                                                      tls="none"))
        sent = client.send("mia@acme.test", message(5))
        assert sent.provider_id is not None and sent.provider_id.startswith("Sent/")
        [got] = smtp.state.received
        assert b"Message-ID: <crm-5.acme@crmsync.invalid>" in got.data
        conn = imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False)
        conn.login("mia", PASSWORD)
        conn.select_folder("Sent")
        uid = int(sent.provider_id.rsplit("/", 1)[1])
        flags = conn.fetch([uid], ["FLAGS"])[uid][b"FLAGS"]
        conn.logout()
        assert b"\\Seen" in flags and b"$CrmsyncUnsent" not in flags
        assert client.find_sent("mia@acme.test", "<crm-5.acme@crmsync.invalid>") == sent
        assert len(smtp.state.received) == 1
    finally:
        dovecot.stop()
