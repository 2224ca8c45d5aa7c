"""Outlook mailboxes sync every folder in their scope (issue #13; S1, S2, S8, S12, L4), against
the loopback Graph test server (tests/graph_fake.py, TLS): `GraphSource` as the sync workers use
it, and the sync worker itself (the user's reply from Outlook joins the CRM's thread; a
ChangeMailboxScope is followed; attachments meet S8)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from graph_fake import FakeGraph, make_certificate

from adapters.providers.graph.client import GraphClient
from adapters.providers.graph.source import GraphSource, decode_graph_cursor
from adapters.providers.sources import Changes, ResyncPage
from domain import events as ev
from runners.entrypoints.sync_runner import ConfiguredSources
from runners.services.engine import Engine
from runners.services.mail_directory import MailboxRef
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

ADDRESS = "mia@outlook.test"
WINDOW = datetime.now(UTC) - timedelta(days=30)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("graph-cert"))


@pytest.fixture
def graph(cert: tuple[Path, Path]) -> Iterator[FakeGraph]:
    fake = FakeGraph(ADDRESS, *cert)
    yield fake
    fake.close()


def source(graph: FakeGraph, cert: tuple[Path, Path], folders: list[str] | None = None
           ) -> GraphSource:
    client = GraphClient(lambda: "token", graph.url,
                         verify=ssl.create_default_context(cafile=str(cert[0])))
    return GraphSource(client, folders=folders, backfill_days=30)


def resynced(src: GraphSource) -> tuple[list[ev.MailMessage], str]:
    pages: list[ResyncPage] = list(src.resync(ADDRESS, WINDOW))
    cursor = pages[-1].cursor
    assert cursor is not None
    unique = {m.id: m for p in pages for m in p.messages}
    return list(unique.values()), cursor


def labels(messages: list[ev.MailMessage]) -> dict[str, str]:
    return {m.id: m.labels[0] for m in messages}


def test_s1_outlook_syncs_every_folder_except_junk_deleted_drafts_and_outbox(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    projects = graph.add_folder("Projects")
    acme = graph.add_folder("Acme", parent=projects)
    inbox = graph.add(2)
    sent = graph.add(1, folder="F-sentitems")
    filed = graph.add(1, folder=projects) + graph.add(1, folder=acme)
    for wk in ("junkemail", "deleteditems", "drafts", "outbox"):
        graph.add(1, folder=f"F-{wk}")
    graph.add_folder("Old", parent="F-deleteditems")
    src = source(graph, cert)
    messages, cursor = resynced(src)
    assert labels(messages) == {**dict.fromkeys(inbox, "Inbox"), sent[0]: "Sent Items",
                                filed[0]: "Projects", filed[1]: "Projects/Acme"}
    assert set(decode_graph_cursor(cursor).links) == {"F-inbox", "F-sentitems", projects, acme}

    # later: a new message in each synced folder, nothing from the others
    later = graph.add(1, folder="F-sentitems") + graph.add(1, folder=acme)
    graph.add(1, folder="F-junkemail")
    asked = len(graph.requests)
    changes: Changes = src.changes(ADDRESS, cursor)
    # the folder tree (root + two parents of children) and one delta per synced folder: the
    # well-known folders' ids come from the cursor
    assert len(graph.requests) - asked == 3 + 4
    assert labels(changes.messages) == {later[0]: "Sent Items", later[1]: "Projects/Acme"}
    assert changes.deleted_ids == [] and not changes.more
    assert src.changes(ADDRESS, changes.new_cursor).messages == []


def test_s1_outlook_label_scope_reads_the_named_folders_and_sent_items(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    projects = graph.add_folder("Projects")
    graph.add(1)
    wanted = graph.add(1, folder=projects) + graph.add(1, folder="F-sentitems")
    messages, cursor = resynced(source(graph, cert, ["Projects"]))
    assert {m.id for m in messages} == set(wanted)
    assert set(decode_graph_cursor(cursor).links) == {projects, "F-sentitems"}
    deltas = {p for p, _ in graph.queries if p.endswith("/messages/delta")}
    assert not any("F-inbox" in p or "/inbox/" in p for p in deltas)

    # a label that names no folder is a category: any folder may hold it, so all are read
    tagged = graph.add(1, categories=["CRM"])
    messages, _ = resynced(source(graph, cert, ["Projects", "CRM"]))
    assert set(tagged) <= {m.id for m in messages}
    assert {m.id: m.labels for m in messages}[tagged[0]] == ["Inbox", "CRM"]


def test_s1_outlook_inbox_cursor_of_earlier_versions_continues_and_backfills_others(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    graph.add(1)
    old_round = GraphClient(lambda: "token", graph.url, verify=ssl.create_default_context(
        cafile=str(cert[0]))).changes_since(ADDRESS, None)  # the Inbox-only client before
    assert old_round.new_cursor.startswith("https://")
    new_inbox = graph.add(1)
    recent_sent = graph.add(1, folder="F-sentitems", minutes_ago=60)
    graph.add(1, folder="F-sentitems", minutes_ago=60 * 24 * 45)  # outside the S2 window
    changes = source(graph, cert).changes(ADDRESS, old_round.new_cursor)
    assert {m.id for m in changes.messages} == {*new_inbox, *recent_sent}
    stored = decode_graph_cursor(changes.new_cursor)
    assert not stored.legacy and set(stored.links) == {"F-inbox", "F-sentitems"}
    assert stored.windows == {} and stored.known["inbox"] == "F-inbox"


def test_s12_outlook_move_between_folders_is_an_update_and_to_deleted_items_a_deletion(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    archive = graph.add_folder("Archive")
    first, second = graph.add(2)
    src = source(graph, cert)
    _, cursor = resynced(src)
    graph.move(first, archive)
    moved = src.changes(ADDRESS, cursor)
    assert labels(moved.messages) == {first: "Archive"} and moved.deleted_ids == []
    graph.move(second, "F-deleteditems")
    graph.move(first, "F-junkemail")
    trashed = src.changes(ADDRESS, moved.new_cursor)
    assert trashed.messages == [] and sorted(trashed.deleted_ids) == sorted([first, second])


def test_s8_outlook_attachments_are_read_as_metadata_without_content(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    [mid] = graph.add(1, attachments=[
        {"name": "offer.pdf", "size": 1200, "contentType": "application/pdf"},
        {"name": "setup.exe", "size": 90, "contentType": "application/x-msdownload"}])
    [plain] = graph.add(1)
    messages, _ = resynced(source(graph, cert))
    found = {m.id: m.attachments for m in messages}
    assert [(a.name, a.size, a.content_type) for a in found[mid]] == [
        ("offer.pdf", 1200, "application/pdf"), ("setup.exe", 90, "application/x-msdownload")]
    assert found[plain] == []
    asked = [(p, q) for p, q in graph.queries if p.endswith("/attachments")]
    # only the message that has some (read by the backfill and again by the delta round)
    assert {p.split("/")[-2] for p, _ in asked} == {mid}
    assert all("contentBytes" not in q["$select"] for _, q in asked)


# -- through the sync worker ---
class Credentials:
    def __init__(self, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.rows = rows

    def get(self, tenant: str, mailbox: str) -> dict[str, Any] | None:
        return self.rows.get((tenant, mailbox))


def worker_for(graph: FakeGraph, cert: tuple[Path, Path], engine: Engine) -> SyncWorker:
    creds = Credentials({("acme", "mia-outlook"): {"access_token": "eyJ0-graph-token"}})
    return SyncWorker(engine, ConfiguredSources(creds, graph_url=graph.url,  # type: ignore[arg-type]
                                                graph_ca=str(cert[0]), tokens={}))


def apply(engine: Engine, *commands: dict[str, Any]) -> Any:
    report = engine.apply_lines([json.dumps({"tenant": "acme", **c}) for c in commands])
    assert not report.rejected, report.rejected
    return report


def of(engine: Engine, kind: type[Any]) -> list[Any]:
    return [e for _, e in engine.events("acme") if isinstance(e, kind)]


def test_s1_outlook_reply_sent_from_outlook_joins_the_crm_thread(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    engine = Engine.open_in_memory()
    apply(engine, {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
          {"cmd": "ConnectMailbox", "mailbox": "mia-outlook", "user": "mia",
           "provider": "outlook", "address": ADDRESS,
           "scope": {"mode": "labels", "labels": ["Inbox"]}})
    worker = worker_for(graph, cert, engine)
    ref = MailboxRef("acme", "mia-outlook")
    [incoming] = graph.add(1, conversationId="conv-deal")
    worker.sync_mailbox(ref, None)
    # the user answers from Outlook: the reply is in Sent Items only
    [reply] = graph.add(1, folder="F-sentitems", conversationId="conv-deal",
                        **{"from": {"emailAddress": {"address": ADDRESS}}})
    [unrelated] = graph.add(1, folder="F-sentitems",
                            **{"from": {"emailAddress": {"address": ADDRESS}}})
    worker.sync_mailbox(ref, None)
    state = engine.state("acme")
    thread = state.threads["mia-outlook:conv-deal"]
    assert thread.messages == [incoming, reply]
    assert state.messages[("mia-outlook", reply)].labels == ("Sent Items",)
    skipped = {e.id: e.reason for e in of(engine, ev.MessageSkipped)}
    assert skipped == {unrelated: "out_of_scope"}


def test_s1_outlook_change_mailbox_scope_is_followed_by_the_worker(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    engine = Engine.open_in_memory()
    projects = graph.add_folder("Projects")
    apply(engine, {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
          {"cmd": "ConnectMailbox", "mailbox": "mia-outlook", "user": "mia",
           "provider": "outlook", "address": ADDRESS,
           "scope": {"mode": "labels", "labels": ["Inbox"]}})
    worker = worker_for(graph, cert, engine)
    ref = MailboxRef("acme", "mia-outlook")
    inbox = graph.add(1)
    graph.add(1, folder=projects)
    [first] = worker.catch_up()  # the first sync follows MailboxConnected
    assert first.mailboxes == [ref] and first.resynced
    assert {m for _, m in engine.state("acme").messages} == set(inbox)
    assert worker.catch_up() == []  # nothing pending any more
    apply(engine, {"cmd": "ChangeMailboxScope", "mailbox": "mia-outlook",
                   "scope": {"mode": "labels", "labels": ["Projects"]}})
    later_inbox = graph.add(1)
    later_projects = graph.add(1, folder=projects)
    [followed] = worker.catch_up()  # the scope change is followed without a delivery
    assert followed.mailboxes == [ref] and not followed.resynced
    state = engine.state("acme")
    assert set(later_projects) <= {m for _, m in state.messages}
    assert not set(later_inbox) & {m for _, m in state.messages}
    assert state.mailboxes["mia-outlook"].scope == {"mode": "labels", "labels": ["Projects"]}


def test_s8_outlook_attachments_meet_the_size_and_type_rules(
        graph: FakeGraph, cert: tuple[Path, Path]) -> None:
    engine = Engine.open_in_memory()
    apply(engine, {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
          {"cmd": "ConnectMailbox", "mailbox": "mia-outlook", "user": "mia",
           "provider": "outlook", "address": ADDRESS})
    [mid] = graph.add(1, attachments=[
        {"name": "offer.pdf", "size": 1200, "contentType": "application/pdf"},
        {"name": "video.pdf", "size": 5 << 20, "contentType": "application/pdf"},
        {"name": "setup.exe", "size": 90, "contentType": "application/x-msdownload"}])
    worker_for(graph, cert, engine).sync_mailbox(MailboxRef("acme", "mia-outlook"), None)
    rejected = {e.attachment: e.reason for e in of(engine, ev.AttachmentRejected)}
    assert set(rejected) == {"video.pdf", "setup.exe"}
    assert rejected["video.pdf"].startswith("too_large")
    assert rejected["setup.exe"].startswith("type_not_allowed")
    # the thread answer lists them all (S8, issue #13 point 4)
    answer = engine.query_thread("acme", "mia", "mia-outlook:conv-1")
    [message] = answer["messages"]
    assert message["id"] == mid and message["message_id"] == "<g1@ext.test>"
    assert message["attachments"] == [
        {"name": "offer.pdf", "size": 1200, "content_type": "application/pdf"},
        {"name": "video.pdf", "size": 5 << 20, "content_type": "application/pdf",
         "refused": True, "reason": rejected["video.pdf"]},
        {"name": "setup.exe", "size": 90, "content_type": "application/x-msdownload",
         "refused": True, "reason": rejected["setup.exe"]}]
