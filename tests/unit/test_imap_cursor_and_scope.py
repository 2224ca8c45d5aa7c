"""IMAP folders without a server (issue #4, S1): the mailbox cursor as a folder -> cursor map
(the INBOX-only cursor of earlier versions still read), which folders a scope selects, and the
scope as `ConnectMailbox` stores it."""

from __future__ import annotations

import json

import pytest

from adapters.errors import CursorExpired
from adapters.providers.imap.client import (
    INBOX,
    FolderInfo,
    ImapAccount,
    ImapCursor,
    decode_folder_cursors,
    encode_folder_cursors,
)
from adapters.providers.sources import ImapSource, folders_in_scope, scope_folders

INBOX_CURSOR = ImapCursor(uidvalidity=1700000001, uidnext=43, highestmodseq=97, uids="1:40,42")
SENT_CURSOR = ImapCursor(uidvalidity=1700000002, uidnext=5, highestmodseq=None, uids="")


def folder(name: str, *flags: str, delimiter: str | None = ".") -> FolderInfo:
    return FolderInfo(name, delimiter, frozenset(f.lower() for f in flags))


# -- the cursor map --------------------------------------------------------------------------------
def test_s2_folder_cursor_map_round_trips_compactly() -> None:
    cursors = {"Sent": SENT_CURSOR, INBOX: INBOX_CURSOR, "Entwürfe.Kunden": SENT_CURSOR}
    text = encode_folder_cursors(cursors)
    assert decode_folder_cursors(text) == cursors
    assert " " not in text and "\\u" not in text  # compact, folder names as they are
    assert text.startswith('{"f":{"Entwürfe.Kunden":')  # sorted: the same map, the same text
    assert json.loads(text)["f"][INBOX] == {"v": 1700000001, "n": 43, "m": 97, "u": "1:40,42"}
    assert decode_folder_cursors(encode_folder_cursors({})) == {}


def test_l3_single_folder_cursor_of_earlier_versions_is_inboxs() -> None:
    old = INBOX_CURSOR.encode()  # what the INBOX-only sync stored
    assert old == '{"v":1700000001,"n":43,"m":97,"u":"1:40,42"}'
    assert decode_folder_cursors(old) == {INBOX: INBOX_CURSOR}


@pytest.mark.parametrize("text", [
    "", "not json", "42", '"INBOX"', "[]", "null",
    '{"v":1}',  # an old cursor without its fields
    '{"f":[]}', '{"f":{"INBOX":7}}', '{"f":{"INBOX":{"v":1,"n":2,"m":null}}}',
    '{"f":{"":{"v":1,"n":2,"m":null,"u":""}}}',
    '{"f":{"INBOX":{"v":1,"n":2,"m":null,"u":"5:3"}}}',  # a bad UID range
    '{"f":{},"v":1}',
    "1744117233",  # a Gmail history id
    "https://graph.microsoft.com/v1.0/users/x/messages/delta?$deltatoken=abc",
])
def test_bad_cursor_is_a_value_error_and_expires_the_imap_cursor(text: str) -> None:
    with pytest.raises(ValueError, match=r"^not an IMAP cursor"):
        decode_folder_cursors(text)
    source = ImapSource(ImapAccount("127.0.0.1", 1, "u", "p", tls="none", timeout=1))
    with pytest.raises(CursorExpired, match="not an IMAP cursor"):  # before any connection
        source.changes("mia@imap.test", text)


# -- the folders in scope --------------------------------------------------------------------------
LISTING = [
    folder("INBOX"), folder("Sent", "\\Sent"), folder("Archive"), folder("Archive.2024"),
    folder("Spam", "\\Junk"), folder("Deleted Messages", "\\Trash", "\\HasChildren"),
    folder("Deleted Messages.Old"), folder("Junk"), folder("trash"), folder("INBOX.Spam"),
    folder("Papierkorb"), folder("Clients", "\\Noselect", "\\HasChildren"),
    folder("Clients.Acme"), folder("Gone", "\\NonExistent"),
    folder("Projects.Trash"),  # a user's own subfolder: not the account's trash
    folder("Drafts", "\\Drafts"), folder("Entwürfe"), folder("All Mail", "\\All"),
    folder("Starred", "\\Flagged"),
]


def test_s1_scope_all_is_every_selectable_folder_but_junk_trash_drafts_and_virtual() -> None:
    """Drafts are unsent text (never another viewer's to read); `\\All`/`\\Flagged` hold
    copies of mail in the real folders."""
    assert folders_in_scope(LISTING, None) == [
        "INBOX", "Archive", "Archive.2024", "Clients.Acme", "Projects.Trash", "Sent"]


def test_s1_junk_and_trash_by_name_when_nothing_is_flagged() -> None:
    plain = [folder("INBOX"), folder("Sent"), folder("Junk E-Mail"), folder("Trash"),
             folder("Trash.2023"), folder("SPAM"), folder("Gelöschte Elemente"),
             folder("INBOX/Junk", delimiter="/"), folder("Notes")]
    assert folders_in_scope(plain, None) == ["INBOX", "Notes", "Sent"]
    flat = [folder("INBOX", delimiter=None), folder("Trash.2023", delimiter=None),
            folder("Trash", delimiter=None)]
    assert folders_in_scope(flat, None) == ["INBOX", "Trash.2023"]  # no hierarchy: a name


def test_s1_scope_labels_selects_existing_folders_by_exact_name() -> None:
    assert folders_in_scope(LISTING, ("Sent", "Archive.2024", "Spam", "Clients", "Nope",
                                      "inbox")) == ["Archive.2024", "Sent", "Spam"]
    assert folders_in_scope(LISTING, ()) == []


def test_s1_scope_as_connect_mailbox_stores_it() -> None:
    assert scope_folders({"mode": "all"}) is None
    assert scope_folders({"mode": "labels", "labels": ["INBOX", "Sent"]}) == ("INBOX", "Sent")
    assert scope_folders({"mode": "labels", "labels": []}) == ()
