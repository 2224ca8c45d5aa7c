"""One contract for the outbound port (S7, S12): the fake (`MemoryOutbound`) and the real adapters
— Gmail and Graph over real HTTP against local test servers that keep state like the providers
(Graph over TLS), IMAP against a private Dovecot (SMTP submission recorded by a stand-in) — pass
the same scenarios.
"""

from __future__ import annotations

import base64
import email
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import imapclient  # type: ignore[import-untyped]
import pytest
from dovecot import DovecotServer, ensure_dovecot
from outbound_servers import MAILBOX, TOKEN, GmailServer, GraphServer, Stored, ids
from services import missing

from adapters.errors import MailboxGone, ProviderError
from adapters.providers.gmail.outbound import GmailOutbound
from adapters.providers.graph.outbound import GraphOutbound
from adapters.providers.imap.client import ImapAccount, provider_id
from adapters.providers.imap.outbound import ImapOutbound
from adapters.providers.outbound import MemoryOutbound, OutboundClient, OutboundMessage, Sent

pytestmark = pytest.mark.integration

_ids = ids


def outbound_message(n: int | None = None, **extra: Any) -> OutboundMessage:
    n = n if n is not None else next(_ids)
    fields: dict[str, Any] = {
        "message_id": f"<crm-{n}.acme@crmsync.invalid>", "from_": MAILBOX,
        "to": ("carla@customer.test",), "subject": f"Offer {n} — üñï", "body": f"Hello {n}\n",
        "sent_at": datetime(2026, 1, 5, 9, 0, tzinfo=UTC), **extra}
    return OutboundMessage(**fields)


# --- one harness per adapter --------------------------------------------------------------------


@dataclass
class Harness:
    client: OutboundClient
    seed: Callable[[str], str]  # Message-ID -> provider id of a message that just arrived
    is_read: Callable[[str], bool | None]  # None: gone (trashed/expunged)
    raw_of: Callable[[str], bytes]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    ensure_dovecot()
    server = DovecotServer()
    server.add_user("mia", "outbound-imap-secret")
    server.start()
    yield server
    server.stop()


def _memory() -> Iterator[Harness]:
    fake = MemoryOutbound()

    def seed(message_id: str) -> str:
        pid = f"seed-{next(_ids)}"
        fake.add(MAILBOX, pid, message_id)
        return pid

    def raw_of(pid: str) -> bytes:
        return fake.mailboxes[MAILBOX][pid].raw

    yield Harness(fake, seed, lambda pid: fake.is_read(MAILBOX, pid), raw_of)


def _gmail() -> Iterator[Harness]:
    server = GmailServer()
    client = GmailOutbound(lambda: TOKEN, server.origin, max_retries=1, backoff=0.01)

    def seed(message_id: str) -> str:
        pid = f"{next(_ids):016x}"
        server.messages[pid] = Stored(b"", message_id, pid)
        return pid

    def is_read(pid: str) -> bool | None:
        stored = server.messages.get(pid)
        return None if stored is None or stored.trashed else stored.read

    try:
        yield Harness(client, seed, is_read, lambda pid: server.messages[pid].raw)
    finally:
        client.close()
        server.close()


def _graph(certificate: tuple[Path, Path]) -> Iterator[Harness]:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = GraphServer(tls)
    client = GraphOutbound(lambda: TOKEN, server.origin + "/v1.0", max_retries=1, backoff=0.01,
                           verify=ssl.create_default_context(cafile=str(cert)))

    def seed(message_id: str) -> str:
        pid = f"AAMk{next(_ids):08d}="
        server.messages[pid] = Stored(b"", message_id, f"conv-{pid}")
        return pid

    def is_read(pid: str) -> bool | None:
        stored = server.messages.get(pid)
        return None if stored is None or stored.trashed else stored.read

    try:
        yield Harness(client, seed, is_read, lambda pid: server.messages[pid].raw)
    finally:
        client.close()
        server.close()


def _imap(dovecot: DovecotServer) -> Iterator[Harness]:
    account = ImapAccount(dovecot.host, dovecot.port, "mia", "outbound-imap-secret", tls="none")
    submitted: list[tuple[bytes, str, list[str]]] = []
    client = ImapOutbound(account, lambda raw, sender, to: submitted.append((raw, sender, to)),
                          sent_folder=f"Sent{next(_ids)}")

    def connect() -> Any:
        conn = imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False)
        conn.login("mia", "outbound-imap-secret")
        return conn

    def seed(message_id: str) -> str:
        raw = (f"Message-ID: {message_id}\r\nFrom: carla@customer.test\r\nTo: {MAILBOX}\r\n"
               "Subject: hi\r\nDate: Mon, 05 Jan 2026 09:00:00 +0000\r\n\r\nhello\r\n").encode()
        conn = connect()
        answer = conn.append("INBOX", raw, flags=[])
        conn.logout()
        found = re.search(rb"APPENDUID (\d+) (\d+)", answer)
        assert found is not None
        return provider_id("INBOX", int(found.group(1)), int(found.group(2)))

    def fetch(pid: str, what: str) -> Any:
        folder, _, uid = pid.rsplit("/", 2)
        conn = connect()
        conn.select_folder(folder)
        item = conn.fetch([int(uid)], [what]).get(int(uid))
        conn.logout()
        return item

    def is_read(pid: str) -> bool | None:
        item = fetch(pid, "FLAGS")
        return None if item is None else b"\\Seen" in item[b"FLAGS"]

    def raw_of(pid: str) -> bytes:
        raw: bytes = fetch(pid, "BODY.PEEK[]")[b"BODY[]"]
        assert submitted and submitted[-1][0] == raw  # what was submitted is the Sent copy
        return raw

    yield Harness(client, seed, is_read, raw_of)


@pytest.fixture(params=["memory", "gmail", "graph", "imap"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        yield from _memory()
    elif request.param == "gmail":
        yield from _gmail()
    elif request.param == "graph":
        yield from _graph(request.getfixturevalue("certificate"))
    else:
        yield from _imap(request.getfixturevalue("dovecot"))


# --- the contract ---------------------------------------------------------------------------------


def test_s7_sent_message_is_found_by_its_message_id(harness: Harness) -> None:
    message = outbound_message()
    assert harness.client.find_sent(MAILBOX, message.message_id) is None
    sent = harness.client.send(MAILBOX, message)
    assert sent.provider_id is not None
    found = harness.client.find_sent(MAILBOX, message.message_id)
    assert found is not None and found.provider_id == sent.provider_id
    parsed = email.message_from_bytes(harness.raw_of(sent.provider_id))
    assert parsed["Message-ID"] == message.message_id
    assert str(email.header.make_header(email.header.decode_header(parsed["Subject"]))) \
        == message.subject
    assert "carla@customer.test" in parsed["To"]


def test_s7_reply_headers_reach_the_provider(harness: Harness) -> None:
    parent = "<parent-1@customer.test>"
    message = outbound_message(in_reply_to=parent, references=(parent,))
    sent = harness.client.send(MAILBOX, message)
    assert sent.provider_id is not None
    parsed = email.message_from_bytes(harness.raw_of(sent.provider_id))
    assert parsed["In-Reply-To"] == parent and parsed["References"] == parent


def test_s12_set_read_both_ways(harness: Harness) -> None:
    pid = harness.seed(f"<seed-{next(_ids)}@customer.test>")
    assert harness.is_read(pid) is False
    assert harness.client.set_read(MAILBOX, pid, True) is True
    assert harness.is_read(pid) is True
    assert harness.client.set_read(MAILBOX, pid, False) is True
    assert harness.is_read(pid) is False


def test_s12_trash_is_idempotent_and_unknown_ids_are_false(harness: Harness) -> None:
    pid = harness.seed(f"<seed-{next(_ids)}@customer.test>")
    assert harness.client.trash(MAILBOX, pid) is True
    assert harness.is_read(pid) is None
    harness.client.trash(MAILBOX, pid)  # Gmail answers 200 again, the others "not there"
    assert harness.is_read(pid) is None
    unknown = f"{pid}9"  # never handed out
    assert harness.client.trash(MAILBOX, unknown) is False
    assert harness.client.set_read(MAILBOX, unknown, True) is False


# --- adapter specifics ----------------------------------------------------------------------------


def test_gmail_throttled_send_is_retried_and_errors_carry_no_token() -> None:
    server = GmailServer()
    client = GmailOutbound(lambda: TOKEN, server.origin, max_retries=2, backoff=0.01)
    try:
        server.failures = [(429, {"Retry-After": "0"}, {"error": {"code": 429}})]
        sent = client.send(MAILBOX, outbound_message())
        assert sent.provider_id in server.messages
        server.failures = [(400, {}, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                "message": f"bad {TOKEN}"}})]
        with pytest.raises(ProviderError) as info:
            client.send(MAILBOX, outbound_message())
        assert TOKEN not in str(info.value) and info.value.status == 400
        with pytest.raises(MailboxGone):
            client.trash("nobody@acme.test", "1")
    finally:
        client.close()
        server.close()


def test_graph_draft_left_by_a_crash_is_sent_not_created_again(
        certificate: tuple[Path, Path]) -> None:
    harness_iter = _graph(certificate)
    harness = next(harness_iter)
    client = harness.client
    assert isinstance(client, GraphOutbound)
    message = outbound_message()
    # the draft is created, then the process dies before /send
    response = client._http.request(
        "POST", client._user(MAILBOX, "messages"), headers=[("Content-Type", "text/plain")],
        content=base64.b64encode(message.rfc822()))
    draft_id = response.json()["id"]
    found = client.find_sent(MAILBOX, message.message_id)
    assert found == Sent(draft_id, f"conv-{draft_id}")
    assert harness.is_read(draft_id) is True  # there, and sent now (no longer a draft)
    again = client.find_sent(MAILBOX, message.message_id)
    assert again is not None and again.provider_id == draft_id
    next(harness_iter, None)


def test_imap_copy_appended_but_not_submitted_is_submitted_by_find_sent(
        dovecot: DovecotServer) -> None:
    account = ImapAccount(dovecot.host, dovecot.port, "mia", "outbound-imap-secret", tls="none")
    submitted: list[bytes] = []
    crash = [True]

    def submit(raw: bytes, sender: str, to: list[str]) -> None:
        if crash[0]:
            crash[0] = False
            raise ProviderError("imap", "SMTP 127.0.0.1:587: ConnectionRefusedError")
        submitted.append(raw)

    client = ImapOutbound(account, submit, sent_folder=f"Sent{next(_ids)}")
    message = outbound_message()
    with pytest.raises(ProviderError):
        client.send(MAILBOX, message)
    assert submitted == []
    found = client.find_sent(MAILBOX, message.message_id)
    assert found is not None and len(submitted) == 1
    assert client.find_sent(MAILBOX, message.message_id) == found
    assert len(submitted) == 1  # the keyword is gone: not submitted twice
