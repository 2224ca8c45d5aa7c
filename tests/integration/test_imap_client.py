"""The IMAP client against a real, private Dovecot (issue #4), seeded by IMAP APPEND with real
messages from shared/corpora (fedora-devel, flanker, mail-parser).

The server comes from tests/dovecot.py (installed from Debian when missing). shared/ is
$CRMSYNC_SHARED, else beside the repository; without it, or without Dovecot, these tests skip,
or fail under CRMSYNC_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import imapclient  # type: ignore[import-untyped]
import pytest
from dovecot import DovecotServer, ensure_dovecot
from services import corpus_file

from adapters.errors import CursorExpired, MailboxGone, ProviderError
from adapters.providers.imap.client import (
    ImapAccount,
    ImapClient,
    ImapCursor,
    format_uid_set,
    parse_uid_set,
    provider_id,
)
from adapters.providers.mime import parse_message
from benchmarks.corpus import split_mbox

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "Tr0ub4dor&3-imap-secret"
_FROM_LINE = re.compile(rb"^From .*\d\d \d\d\d\d$")
_folders = itertools.count(1)


def _corpus_file(*parts: str) -> bytes:
    return corpus_file(*parts).read_bytes()


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _fedora(count: int) -> list[bytes]:
    """The first `count` messages of the fedora-devel 2010-01 mbox (From_ lines dropped)."""
    mbox = gzip.decompress(_corpus_file("fedora-devel-2010-01", "2010-January.txt.gz"))
    return [_crlf(raw) for raw in split_mbox(mbox)[:count]]


@pytest.fixture(scope="module")
def server() -> Iterator[DovecotServer]:
    ensure_dovecot()
    dovecot = DovecotServer()
    dovecot.add_user(USER, PASSWORD)
    dovecot.start()
    yield dovecot
    dovecot.stop()


@pytest.fixture
def account(server: DovecotServer) -> ImapAccount:
    return ImapAccount(server.host, server.port, USER, PASSWORD, tls="none", timeout=10)


@pytest.fixture
def admin(server: DovecotServer) -> Iterator[imapclient.IMAPClient]:
    """A plain imapclient connection that plays the other mail clients and the MTA."""
    conn = imapclient.IMAPClient(server.host, port=server.port, ssl=False, timeout=10)
    conn.login(USER, PASSWORD)
    yield conn
    conn.logout()


@pytest.fixture
def folder(admin: imapclient.IMAPClient) -> str:
    name = f"Sync{next(_folders)}"
    admin.create_folder(name)
    return name


@pytest.fixture
def client(account: ImapAccount) -> Iterator[ImapClient]:
    with ImapClient.connect(account) as imap:
        yield imap


def append(admin: imapclient.IMAPClient, folder: str, raw: bytes,
           flags: tuple[bytes, ...] = ()) -> int:
    """APPEND with the message's own Date as INTERNALDATE; the new UID (UIDPLUS)."""
    try:
        when: datetime | None = parse_message(raw, "seed").sent_at
    except ValueError:
        when = None
    answer = admin.append(folder, raw, flags=flags, msg_time=when)
    match = re.search(rb"APPENDUID \d+ (\d+)", answer)
    assert match, answer
    return int(match.group(1))


def seed(admin: imapclient.IMAPClient, folder: str, raws: list[bytes]) -> dict[int, bytes]:
    return {append(admin, folder, raw): raw for raw in raws}


# -- tests ----------------------------------------------------------------------------------------
def test_uid_sets_and_cursor_round_trip() -> None:
    assert format_uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert parse_uid_set("1:3,5,9:10") == {1, 2, 3, 5, 9, 10}
    cursor = ImapCursor(uidvalidity=7, uidnext=11, highestmodseq=42, uids="1:3,5")
    assert ImapCursor.decode(cursor.encode()) == cursor
    with pytest.raises(ValueError, match="not an IMAP cursor"):
        ImapCursor.decode('{"v":1}')


def test_initial_sync_returns_the_seeded_messages(client: ImapClient, admin: imapclient.IMAPClient,
                                                  folder: str) -> None:
    raws = [*_fedora(12), _corpus_file("flanker", "bilingual-simple.eml"),
            _corpus_file("mail-parser", "mail_test_3")]
    seeded = seed(admin, folder, raws)
    state = client.state(folder)
    assert state.uidnext == max(seeded) + 1
    assert state.highestmodseq is not None and client.condstore  # Dovecot has CONDSTORE

    changes = client.changes_since(folder, None)

    assert not changes.rejections and not changes.deleted and not changes.flag_changes
    assert [m.id for m in changes.messages] == [provider_id(folder, state.uidvalidity, u)
                                                for u in sorted(seeded)]
    for msg, uid in zip(changes.messages, sorted(seeded), strict=True):
        expected = parse_message(seeded[uid], msg.id)
        assert (msg.subject, msg.from_, msg.message_id, msg.in_reply_to, msg.references) == (
            expected.subject, expected.from_, expected.message_id, expected.in_reply_to,
            expected.references)
        assert msg.sent_at == expected.sent_at and msg.labels == [folder] and not msg.read
    by_mid = {m.message_id: m for m in changes.messages}
    root = by_mid["<1262380882.5526.3.camel@PB3.linux>"]
    assert root.subject == "Fixing the kernel for intel laptops" and root.in_reply_to is None
    replies = [m for m in changes.messages if m.in_reply_to == root.message_id]
    assert len(replies) == 2 and all(m.subject.startswith("Re: Fixing the kernel") for m in replies)
    bilingual = by_mid["<341090.85574.qm@web50704.mail.re2.yahoo.com>"]
    assert bilingual.from_ == "hello@example.com"
    assert changes.cursor == ImapCursor(state.uidvalidity, state.uidnext, state.highestmodseq,
                                        format_uid_set(seeded))


def test_second_call_returns_only_new_appends(client: ImapClient, admin: imapclient.IMAPClient,
                                              folder: str) -> None:
    fedora = _fedora(6)
    seed(admin, folder, fedora[:4])
    first = client.changes_since(folder, None)
    assert len(first.messages) == 4

    new = seed(admin, folder, fedora[4:])
    second = client.changes_since(folder, ImapCursor.decode(first.cursor.encode()))
    assert [m.id.rsplit("/", 1)[1] for m in second.messages] == [str(u) for u in sorted(new)]
    assert not second.deleted and not second.flag_changes
    assert second.cursor.uidnext == max(new) + 1

    third = client.changes_since(folder, second.cursor)
    assert not third.messages and not third.flag_changes and not third.deleted
    assert third.cursor == second.cursor


def test_seen_flag_shows_up_as_read(client: ImapClient, admin: imapclient.IMAPClient,
                                    folder: str) -> None:
    fedora = _fedora(4)
    uids = seed(admin, folder, fedora[:3])
    seen_uid = append(admin, folder, fedora[3], flags=(b"\\Seen",))
    first = client.changes_since(folder, None)
    assert [m.read for m in first.messages] == [False, False, False, True]

    target = sorted(uids)[1]
    admin.select_folder(folder)
    admin.add_flags([target], [b"\\Seen"])
    admin.remove_flags([seen_uid], [b"\\Seen"])
    second = client.changes_since(folder, first.cursor)

    assert not second.messages
    validity = first.cursor.uidvalidity
    assert {(c.id, c.read) for c in second.flag_changes} == {
        (provider_id(folder, validity, target), True),
        (provider_id(folder, validity, seen_uid), False)}
    assert not client.changes_since(folder, second.cursor).flag_changes  # reported once


def test_expunged_message_is_reported_deleted(client: ImapClient, admin: imapclient.IMAPClient,
                                              folder: str) -> None:
    uids = sorted(seed(admin, folder, _fedora(5)))
    first = client.changes_since(folder, None)

    admin.select_folder(folder)
    admin.delete_messages([uids[2]])
    second = client.changes_since(folder, first.cursor)
    assert not second.deleted  # \Deleted alone: still there until expunged
    admin.expunge()
    third = client.changes_since(folder, second.cursor)

    assert third.deleted == [provider_id(folder, first.cursor.uidvalidity, uids[2])]
    assert not third.messages
    assert parse_uid_set(third.cursor.uids) == set(uids) - {uids[2]}
    assert not client.changes_since(folder, third.cursor).deleted


def test_recreated_folder_expires_the_cursor(client: ImapClient, admin: imapclient.IMAPClient,
                                             folder: str) -> None:
    fedora = _fedora(3)
    seed(admin, folder, fedora[:2])
    first = client.changes_since(folder, None)
    assert client.changes_since(folder, first.cursor).cursor == first.cursor

    admin.delete_folder(folder)
    admin.create_folder(folder)
    seed(admin, folder, fedora[2:])
    assert client.state(folder).uidvalidity != first.cursor.uidvalidity
    with pytest.raises(CursorExpired, match="UIDVALIDITY"):
        client.changes_since(folder, first.cursor)


def test_backfill_is_most_recent_first_and_respects_since(
        client: ImapClient, admin: imapclient.IMAPClient, folder: str) -> None:
    fedora = _fedora(14)
    shuffled = fedora[7:] + fedora[:7]  # arrival order differs from UID order
    seeded = seed(admin, folder, shuffled)
    dates = {uid: parse_message(raw, "x").sent_at for uid, raw in seeded.items()}
    since = sorted(dates.values())[5]  # exactly the INTERNALDATE of the sixth oldest

    page = client.backfill(folder, since)

    expected = sorted((u for u in dates if dates[u] >= since), key=lambda u: dates[u],
                      reverse=True)
    assert len(expected) == 9
    validity = client.state(folder).uidvalidity
    assert [m.id for m in page.messages] == [provider_id(folder, validity, u) for u in expected]
    assert [m.sent_at for m in page.messages] == sorted((m.sent_at for m in page.messages),
                                                        reverse=True)
    assert all(m.sent_at >= since for m in page.messages)
    assert not client.backfill(folder, max(dates.values()) + timedelta(seconds=1)).messages

    new_uid = append(admin, folder, _corpus_file("flanker", "text-only.eml"))
    after = client.changes_since(folder, page.cursor)  # the backfill's cursor continues
    assert [m.id for m in after.messages] == [provider_id(folder, validity, new_uid)]


def test_wrong_password_and_missing_folder(account: ImapAccount, client: ImapClient) -> None:
    wrong = "wrong-" + PASSWORD
    bad = ImapAccount(account.host, account.port, USER, wrong, tls="none", timeout=10)
    with pytest.raises(ProviderError) as caught:
        ImapClient.connect(bad).__enter__()
    assert type(caught.value) is ProviderError
    text = f"{caught.value} {caught.value!r} {caught.value.reason}"
    assert "refused" in text and wrong not in text and PASSWORD not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert wrong not in repr(bad)

    with pytest.raises(MailboxGone, match="does not exist"):
        client.changes_since("NoSuchFolder", None)
    with pytest.raises(MailboxGone):
        client.state("NoSuchFolder")


def test_unreachable_server_is_a_provider_error(server: DovecotServer) -> None:
    with pytest.raises(ProviderError, match="cannot connect"):
        ImapClient.connect(ImapAccount("127.0.0.1", 1, USER, PASSWORD, tls="none",
                                       timeout=2)).__enter__()


def test_malformed_message_becomes_a_rejection(client: ImapClient, admin: imapclient.IMAPClient,
                                               folder: str) -> None:
    good = _fedora(2)
    seed(admin, folder, good[:1])
    bad_uid = append(admin, folder, _corpus_file("flanker", "attached-pdf.eml"))
    seed(admin, folder, good[1:])

    changes = client.changes_since(folder, None)

    assert len(changes.messages) == 2
    validity = changes.cursor.uidvalidity
    assert [(r.id, r.reason) for r in changes.rejections] == [
        (provider_id(folder, validity, bad_uid), "no usable From address")]
    assert bad_uid not in parse_uid_set(changes.cursor.uids)
    again = client.changes_since(folder, changes.cursor)
    assert not again.messages and not again.rejections and not again.deleted
