"""Outlook folders in scope, the per-folder Graph cursor and the attachment/folder listings
(issue #13; S1, S8): pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.errors import MalformedWebhook
from adapters.providers.graph.payloads import GraphFolder, graph_attachments, graph_folders
from adapters.providers.sources import (
    GraphCursor,
    decode_graph_cursor,
    encode_graph_cursor,
    graph_folders_in_scope,
)

KNOWN = {"inbox": "I", "sentitems": "S", "junkemail": "J", "deleteditems": "D", "drafts": "R",
         "outbox": "O"}
LISTING = [(GraphFolder(id=i, name=p.rsplit("/", 1)[-1]), p) for i, p in [
    ("A", "Archive"), ("D", "Deleted Items"), ("D1", "Deleted Items/Old"), ("I", "Inbox"),
    ("I1", "Inbox/Projects"), ("J", "Junk Email"), ("O", "Outbox"), ("R", "Drafts"),
    ("S", "Sent Items"), ("X", "Spam")]]


def test_s1_outlook_scope_all_leaves_out_junk_deleted_drafts_outbox_and_below() -> None:
    assert graph_folders_in_scope(LISTING, KNOWN, None) == [
        ("I", "Inbox"), ("A", "Archive"), ("I1", "Inbox/Projects"), ("S", "Sent Items")]


def test_s1_outlook_scope_labels_is_the_named_folders_and_sent_items() -> None:
    assert graph_folders_in_scope(LISTING, KNOWN, ["Inbox/Projects"]) == [
        ("I1", "Inbox/Projects"), ("S", "Sent Items")]
    # an explicit choice of Junk is honoured, as for IMAP
    assert graph_folders_in_scope(LISTING, KNOWN, ["Junk Email"]) == [
        ("J", "Junk Email"), ("S", "Sent Items")]
    # a category (no folder has its name) may be on any message: every folder of `all`
    assert graph_folders_in_scope(LISTING, KNOWN, ["Inbox/Projects", "CRM"]) == \
        graph_folders_in_scope(LISTING, KNOWN, None)


def test_s1_outlook_cursor_round_trips_and_reads_the_inbox_link_of_earlier_versions() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    links = {"S": "https://g.test/v1.0/users/m/mailFolders/S/messages/delta?$deltatoken=2",
             "I": "https://g.test/v1.0/users/m/mailFolders/I/messages/delta?$deltatoken=1"}
    cursor = GraphCursor(links, {"S": since}, {"inbox": "I", "sentitems": "S"})
    encoded = encode_graph_cursor(cursor)
    assert decode_graph_cursor(encoded) == cursor
    assert encoded.index('"I"') < encoded.index('"S"')  # stable: sorted
    old = "https://g.test/v1.0/users/m/mailFolders/inbox/messages/delta?$deltatoken=7"
    assert decode_graph_cursor(old) == GraphCursor({"": old}, legacy=True)
    for bad in ("12345", "{}", '{"g": {"I": "http://x"}}', '{"g": {}, "x": 1}', "[1]",
                '{"g": {"": "https://x"}}', '{"g": {}, "k": {"inbox": 3}}'):
        with pytest.raises(ValueError, match="not a Graph cursor"):
            decode_graph_cursor(bad)


def test_s8_graph_attachments_are_metadata_and_unreadable_ones_are_refused() -> None:
    found = graph_attachments({"value": [
        {"name": "a.pdf", "size": 10, "contentType": "application/pdf"},
        {"@odata.type": "#microsoft.graph.itemAttachment", "size": 5}]})
    assert [(a.name, a.size, a.content_type) for a in found] == [
        ("a.pdf", 10, "application/pdf"), ("", 5, "application/octet-stream")]
    with pytest.raises(MalformedWebhook, match="size"):
        graph_attachments({"value": [{"name": "x", "size": -1}]})
    with pytest.raises(MalformedWebhook):
        graph_attachments({"value": ["x"]})


def test_s1_graph_folder_listing_with_its_next_link() -> None:
    page, link = graph_folders({"value": [{"id": "A", "displayName": "Archive",
                                           "childFolderCount": 2}],
                                "@odata.nextLink": "https://g.test/next"})
    assert page == [GraphFolder(id="A", name="Archive", children=2)]
    assert link == "https://g.test/next"
    with pytest.raises(MalformedWebhook):
        graph_folders({"value": [{"displayName": "no id"}]})
