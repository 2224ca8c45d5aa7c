"""IMAP mailboxes sync every folder in their scope (issue #4; S1, S2, S12, L3-L5), against a
real, private Dovecot (tests/dovecot.py): `ImapSource` as the sync workers use it, one test
through the sync worker itself, and the outbox's IMAP writes outside INBOX.

Every test logs in as a user of its own (an empty account: scope "all" means every folder of
it). Messages are written here with INTERNALDATEs relative to now, so the S2 window is real.
Dovecot's maildir hierarchy delimiter is ".".
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import imapclient  # type: ignore[import-untyped]
import pytest
from dovecot import DovecotServer, ensure_dovecot

from adapters.errors import CursorExpired
from adapters.providers.imap.client import ImapAccount, ImapClient
from adapters.providers.imap.cursor import INBOX, decode_folder_cursors, parse_uid_set, provider_id
from adapters.providers.imap.outbound import ImapOutbound
from adapters.providers.imap.source import ImapSource
from adapters.providers.sources import Changes, ResyncPage
from domain import events as ev
from runners.entrypoints.sync_runner import ConfiguredSources
from runners.services.engine import Engine
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

PASSWORD = "Folder-imap-Secret-7"
ADDRESS = "mia@imap.test"
NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = NOW - timedelta(days=30)
USERS = 40  # Dovecot may not see a passwd-file line added in the same second: all up front
_users = itertools.count(1)
_mails = itertools.count(1)


def _started(dovecot: DovecotServer) -> DovecotServer:
    for n in range(1, USERS + 1):
        dovecot.add_user(f"user{n}", PASSWORD)
    dovecot.start()
    return dovecot


@pytest.fixture(scope="module")
def server() -> Iterator[DovecotServer]:
    """No SPECIAL-USE: Junk and Trash are known by their names only."""
    ensure_dovecot()
    dovecot = _started(DovecotServer())
    yield dovecot
    dovecot.stop()


@pytest.fixture(scope="module")
def special_server() -> Iterator[DovecotServer]:
    ensure_dovecot()
    dovecot = _started(DovecotServer(special_use={"Spam": "\\Junk", "Deleted Messages": "\\Trash",
                                                  "Sent": "\\Sent"}))
    yield dovecot
    dovecot.stop()


class Account:
    """A fresh user: `account` for the code under test, `admin` plays the other mail clients."""

    def __init__(self, server: DovecotServer) -> None:
        self.user = f"user{next(_users)}"
        self.account = ImapAccount(server.host, server.port, self.user, PASSWORD, tls="none",
                                   timeout=10)
        self.admin = imapclient.IMAPClient(server.host, port=server.port, ssl=False, timeout=10)
        self.admin.login(self.user, PASSWORD)

    def append(self, folder: str, days_ago: float = 1, *, in_reply_to: str | None = None,
               message_id: str | None = None, flags: tuple[bytes, ...] = ()) -> tuple[str, str]:
        """A message in `folder` (created when missing) that arrived `days_ago`: its provider
        id and Message-ID."""
        if not self.admin.folder_exists(folder):
            self.admin.create_folder(folder)
        n = next(_mails)
        when = NOW - timedelta(days=days_ago)
        mid = message_id or f"<mail-{n}@customer.test>"
        reply = f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" \
            if in_reply_to else ""
        raw = (f"Message-ID: {mid}\r\n{reply}From: Carla <carla@customer.test>\r\n"
               f"To: {ADDRESS}\r\nSubject: mail {n} in {folder}\r\n"
               f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n\r\nhello {n}\r\n"
               ).encode()
        answer = self.admin.append(folder, raw, flags=flags, msg_time=when)
        found = re.search(rb"APPENDUID (\d+) (\d+)", answer)
        assert found is not None, answer
        return provider_id(folder, int(found.group(1)), int(found.group(2))), mid

    def uid(self, pid: str) -> int:
        return int(pid.rsplit("/", 1)[1])

    def close(self) -> None:
        self.admin.logout()


@pytest.fixture
def mia(server: DovecotServer) -> Iterator[Account]:
    account = Account(server)
    yield account
    account.close()


def resync(source: ImapSource, since: datetime = WINDOW) -> tuple[list[ResyncPage], str]:
    pages = list(source.resync(ADDRESS, since))
    cursor = pages[-1].cursor
    assert cursor is not None and all(p.cursor is None for p in pages[:-1])
    return pages, cursor


def ids(found: Changes | list[ResyncPage]) -> set[str]:
    if isinstance(found, Changes):
        return {m.id for m in found.messages}
    return {m.id for page in found for m in page.messages}


# -- S1: which folders -----------------------------------------------------------------------------
def test_s1_sent_and_user_folders_sync_junk_and_trash_do_not(mia: Account) -> None:
    inbox, _ = mia.append(INBOX)
    sent, _ = mia.append("Sent")
    filed, _ = mia.append("Projects.Acme")  # "Projects" itself is \Noselect
    for name in ("Junk", "Trash", "Trash.Old", "Spam"):
        mia.append(name)
    source = ImapSource(mia.account)

    pages, cursor = resync(source)

    assert ids(pages) == {inbox, sent, filed}
    labels = {m.id: m.labels for page in pages for m in page.messages}
    assert labels == {inbox: [INBOX], sent: ["Sent"], filed: ["Projects.Acme"]}
    assert set(decode_folder_cursors(cursor)) == {INBOX, "Sent", "Projects.Acme"}

    new_sent, _ = mia.append("Sent", days_ago=0)
    mia.append("Junk", days_ago=0)
    mia.append("Trash.Old", days_ago=0)
    changes = source.changes(ADDRESS, cursor)
    assert ids(changes) == {new_sent}
    assert not changes.deleted_ids and not changes.updates
    assert source.changes(ADDRESS, changes.new_cursor).messages == []


def test_s1_special_use_junk_and_trash_are_left_out(special_server: DovecotServer) -> None:
    mia = Account(special_server)
    try:
        assert mia.admin.has_capability("SPECIAL-USE")
        for name in ("Spam", "Deleted Messages", "Deleted Messages.2023", "Junk"):
            mia.append(name)
        kept = {mia.append(name)[0] for name in (INBOX, "Sent", "Newsletters")}
        with ImapClient.connect(mia.account) as client:
            flags = {f.name: f.flags for f in client.folders()}
        assert "\\junk" in flags["Spam"] and "\\trash" in flags["Deleted Messages"]
        assert "\\junk" not in flags["Junk"]  # not flagged: left out by its name

        pages, cursor = resync(ImapSource(mia.account))

        assert ids(pages) == kept
        assert set(decode_folder_cursors(cursor)) == {INBOX, "Sent", "Newsletters"}
    finally:
        mia.close()


def test_s1_labels_scope_with_one_folder_syncs_only_that_folder(mia: Account) -> None:
    mia.append(INBOX)
    mia.append("Sent")
    chosen, _ = mia.append("Projects")
    source = ImapSource(mia.account, folders=("Projects",))

    pages, cursor = resync(source)
    assert ids(pages) == {chosen}
    assert set(decode_folder_cursors(cursor)) == {"Projects"}

    mia.append(INBOX, days_ago=0)
    mia.append("Sent", days_ago=0)
    later, _ = mia.append("Projects", days_ago=0)
    changes = source.changes(ADDRESS, cursor)
    assert ids(changes) == {later}
    assert set(decode_folder_cursors(changes.new_cursor)) == {"Projects"}


# -- cursors: the upgrade, new folders, gone folders, UIDVALIDITY ----------------------------------
def test_l3_old_single_folder_cursor_continues_without_a_resync(mia: Account) -> None:
    first = {mia.append(INBOX)[0] for _ in range(2)}
    with ImapClient.connect(mia.account) as client:
        old = client.changes_since(INBOX, None)  # what the INBOX-only sync stored
    assert {m.id for m in old.messages} == first
    stored = old.cursor.encode()
    assert stored.startswith('{"v":')
    new_inbox, _ = mia.append(INBOX, days_ago=0)
    recent_sent, _ = mia.append("Sent", days_ago=3)
    mia.append("Sent", days_ago=45)  # older than the window

    changes = ImapSource(mia.account).changes(ADDRESS, stored)

    # INBOX continues from its cursor (ids unchanged: INBOX/<uidvalidity>/<uid>), Sent is new
    # to the cursor and backfilled within the window
    assert ids(changes) == {new_inbox, recent_sent}
    assert new_inbox == provider_id(INBOX, old.cursor.uidvalidity, mia.uid(new_inbox))
    assert not changes.deleted_ids
    cursors = decode_folder_cursors(changes.new_cursor)
    assert set(cursors) == {INBOX, "Sent"}
    assert cursors[INBOX].uidvalidity == old.cursor.uidvalidity
    assert parse_uid_set(cursors[INBOX].uids) == {mia.uid(p) for p in first | {new_inbox}}


def test_l3_a_folder_created_after_the_last_sync_is_read_whole(mia: Account) -> None:
    """Mail moved into a new folder keeps its history however old it is (its INTERNALDATE is
    the original's): the folder is read whole, not only within the backfill window."""
    mia.append(INBOX)
    source = ImapSource(mia.account, backfill_days=30)
    _, cursor = resync(source)

    recent, _ = mia.append("Clients", days_ago=2)
    older, _ = mia.append("Clients", days_ago=400)
    changes = source.changes(ADDRESS, cursor)
    assert ids(changes) == {recent, older}

    # once the folder is in the cursor, whatever arrives in it comes, however old its date
    filed_old, _ = mia.append("Clients", days_ago=900)
    assert ids(source.changes(ADDRESS, changes.new_cursor)) == {filed_old}


def test_l3_uidvalidity_change_of_one_folder_expires_the_cursor(mia: Account) -> None:
    mia.append(INBOX)
    mia.append("Clients")
    source = ImapSource(mia.account)
    _, cursor = resync(source)
    assert source.changes(ADDRESS, cursor).new_cursor == cursor

    mia.admin.delete_folder("Clients")
    mia.admin.create_folder("Clients")
    recreated, _ = mia.append("Clients")
    with pytest.raises(CursorExpired, match="UIDVALIDITY of 'Clients'"):
        source.changes(ADDRESS, cursor)

    pages, fresh = resync(source)  # what the worker does next (S2, L3)
    assert recreated in ids(pages)
    assert source.changes(ADDRESS, fresh).messages == []


def test_l4_a_deleted_folder_deletes_nothing(mia: Account) -> None:
    kept, _ = mia.append(INBOX)
    for _ in range(2):
        mia.append("Clients")
    source = ImapSource(mia.account)
    pages, cursor = resync(source)
    assert len(ids(pages)) == 3

    mia.admin.delete_folder("Clients")
    changes = source.changes(ADDRESS, cursor)

    assert changes.deleted_ids == [] and changes.messages == [] and not changes.updates
    after = decode_folder_cursors(changes.new_cursor)
    assert set(after) == {INBOX}
    assert after[INBOX] == decode_folder_cursors(cursor)[INBOX]
    # a folder of that name later is a new folder (backfilled), not an expired cursor
    again, _ = mia.append("Clients", days_ago=0)
    assert ids(source.changes(ADDRESS, changes.new_cursor)) == {again}
    assert kept in ids(pages)


# -- S12: flags, deletions and moves per folder ----------------------------------------------------
def test_s12_flags_and_expunges_are_reported_per_folder(mia: Account) -> None:
    mia.append(INBOX)
    sent, _ = mia.append("Sent")
    filed, _ = mia.append("Projects")
    source = ImapSource(mia.account)
    _, cursor = resync(source)

    mia.admin.select_folder("Sent")
    mia.admin.add_flags([mia.uid(sent)], [b"\\Seen"])
    mia.admin.select_folder("Projects")
    mia.admin.delete_messages([mia.uid(filed)])
    mia.admin.expunge()
    mia.admin.close_folder()
    changes = source.changes(ADDRESS, cursor)

    assert [(u.id, u.read) for u in changes.updates] == [(sent, True)]
    assert changes.deleted_ids == [filed]
    assert not changes.messages


def test_s12_a_move_between_folders_is_a_deletion_and_a_new_message_in_one_page(
        mia: Account) -> None:
    moved, mid = mia.append(INBOX)
    mia.admin.create_folder("Archive")
    source = ImapSource(mia.account)
    _, cursor = resync(source)

    mia.admin.select_folder(INBOX)
    mia.admin.move([mia.uid(moved)], "Archive")
    mia.admin.close_folder()
    changes = source.changes(ADDRESS, cursor)

    assert changes.deleted_ids == [moved]
    [arrived] = changes.messages
    assert arrived.id.startswith("Archive/") and arrived.message_id == mid
    assert arrived.labels == ["Archive"] and not changes.more


def test_l3_resync_backfills_every_folder_most_recent_first_with_the_combined_cursor(
        mia: Account) -> None:
    ages = {(INBOX, 1), ("Sent", 2), ("Projects", 3), (INBOX, 4), ("Sent", 5), ("Projects", 6),
            (INBOX, 50), ("Sent", 60)}
    dated = {mia.append(folder, days_ago=age)[0]: age for folder, age in sorted(ages)}
    source = ImapSource(mia.account, page_size=2)

    pages, cursor = resync(source)

    got = [m.id for page in pages for m in page.messages]
    assert [len(page.messages) for page in pages] == [2, 2, 2, 0]
    assert got == sorted((p for p, age in dated.items() if age < 30), key=dated.__getitem__)
    cursors = decode_folder_cursors(cursor)
    assert set(cursors) == {INBOX, "Sent", "Projects"}
    # the windowed messages are in the cursor (deletions of them are seen), older ones are not
    assert {f"{folder}/{c.uidvalidity}/{u}" for folder, c in cursors.items()
            for u in parse_uid_set(c.uids)} == set(got)
    later, _ = mia.append("Sent", days_ago=0)
    assert ids(source.changes(ADDRESS, cursor)) == {later}


# -- through the sync worker: S12 moves under L5, threads kept -------------------------------------
class Credentials:
    """The credential store port, in memory (the worker reads one mailbox's row per sync)."""

    def __init__(self, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.rows = rows

    def get(self, tenant: str, mailbox: str) -> dict[str, Any] | None:
        return self.rows.get((tenant, mailbox))


def test_s12_l5_moves_apply_through_the_worker_and_trash_is_guarded(
        server: DovecotServer, mia: Account) -> None:
    root, root_mid = mia.append(INBOX, days_ago=3)
    reply, _ = mia.append(INBOX, days_ago=2, in_reply_to=root_mid)
    other, _ = mia.append(INBOX, days_ago=1)
    sent, _ = mia.append("Sent", days_ago=1)
    mia.admin.create_folder("Archive")
    mia.admin.create_folder("Trash")
    engine = Engine.open_in_memory()
    lines = [{"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
             {"cmd": "ConnectMailbox", "mailbox": "mia-imap", "user": "mia", "provider": "imap",
              "address": ADDRESS, "backfill_days": 30}]
    report = engine.apply_lines([json.dumps({"tenant": "acme", **x}) for x in lines])
    assert not report.rejected, report.rejected
    creds = {"host": server.host, "port": server.port, "user": mia.user, "password": PASSWORD,
             "tls": False}
    worker = SyncWorker(engine, ConfiguredSources(Credentials({("acme", "mia-imap"): creds})))

    def state() -> Any:
        return engine.state("acme")

    def of(kind: type[ev.DomainEvent]) -> list[Any]:
        return [e for _, e in engine.events("acme") if isinstance(e, kind)]

    [first] = worker.poll()
    assert first.resynced and first.synced == 4
    assert state().mailboxes["mia-imap"].stored == 4
    thread = state().messages[("mia-imap", root)].thread

    # the user files the conversation: moved, in one page with its new copies, so even moving
    # most of the mailbox stays below the L5 threshold; the thread is the same (S13)
    mia.admin.select_folder(INBOX)
    mia.admin.move([mia.uid(root), mia.uid(reply)], "Archive")
    [moved] = worker.poll()
    assert moved.synced == 2
    assert {e.id for e in of(ev.MessageDeletedAtProvider)} == {root, reply}
    assert not of(ev.MessageDeletionHeld)
    archived = [e.message for e in of(ev.MessageSynced) if e.message.id.startswith("Archive/")]
    assert {m.labels[0] for m in archived} == {"Archive"} and len(archived) == 2
    assert {state().messages[("mia-imap", m.id)].thread for m in archived} == {thread}
    assert state().mailboxes["mia-imap"].stored == 4

    # moving to Trash is deleting: three of four at once is more than 50 % -> held (L5)
    mia.admin.move([mia.uid(other)], "Trash")
    mia.admin.select_folder("Archive")
    mia.admin.move(mia.admin.search(["ALL"]), "Trash")
    mia.admin.close_folder()
    worker.poll()
    assert len(of(ev.MessageDeletionHeld)) == 3
    assert state().mailboxes["mia-imap"].suspect
    assert not [e for e in of(ev.MessageSynced) if e.message.id.startswith("Trash/")]
    assert ("mia-imap", sent) in state().messages


# -- S12: the outbox's IMAP writes outside INBOX ------------------------------------------------
def test_s12_outbound_trash_and_read_in_any_folder(mia: Account) -> None:
    nested, _ = mia.append("Clients.Acme")
    spaced, _ = mia.append("Old Mail")
    mia.append(INBOX)
    source = ImapSource(mia.account)
    pages, cursor = resync(source)
    assert {nested, spaced} <= ids(pages)
    outbound = ImapOutbound(mia.account, lambda raw, sender, to: None)

    assert outbound.set_read(ADDRESS, nested, True) is True
    assert outbound.trash(ADDRESS, spaced) is True
    assert outbound.trash(ADDRESS, spaced) is False  # gone already
    changes = source.changes(ADDRESS, cursor)
    assert [(u.id, u.read) for u in changes.updates] == [(nested, True)]
    assert changes.deleted_ids == [spaced]
    assert outbound.set_read(ADDRESS, nested, False) is True
    assert [(u.id, u.read) for u in source.changes(ADDRESS, changes.new_cursor).updates] == [
        (nested, False)]
