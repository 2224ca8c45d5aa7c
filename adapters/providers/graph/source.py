"""Outlook (Microsoft Graph) as a `MailSource` (adapters.providers.sources): every folder in the
mailbox's S1 scope, each with its own delta link in one mailbox cursor (`GraphCursor`), and
the mailbox's Graph subscription as its push channel (`GraphSubscriptions`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.errors import CursorExpired
from adapters.providers.client import PushSubscription
from adapters.providers.graph.client import GraphClient
from adapters.providers.graph.payloads import GraphFolder
from adapters.providers.sources import (
    DRAFT_NAMES,
    JUNK_NAMES,
    TRASH_NAMES,
    Changes,
    PushChannel,
    PushTarget,
    ResyncPage,
)
from domain.events import MailMessage


class GraphSubscriptions:
    """Graph subscriptions on the mailbox's messages (`/users/{address}/messages`)."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    def subscribe(self, address: str, target: PushTarget) -> PushSubscription:
        if not target.notification_url or not target.client_state:
            raise ValueError("graph subscriptions need a notification URL and a clientState")
        return self.client.create_subscription(
            address, notification_url=target.notification_url,
            lifecycle_url=target.notification_url, client_state=target.client_state,
            expires_at=target.expires_at)

    def renew(self, address: str, subscription_id: str | None, target: PushTarget
              ) -> PushSubscription | None:
        if subscription_id is None:
            return None
        return self.client.renew_subscription(subscription_id, target.expires_at)

    def unsubscribe(self, address: str, subscription_id: str | None) -> bool:
        return subscription_id is not None and self.client.delete_subscription(subscription_id)


# -- Outlook (Graph): every folder in scope (S1) ---------------------------------------------------
# Folders left out of scope `all` (and everything below them), by Graph's well-known names: the
# user's mail client's Junk, Deleted Items, Drafts and Outbox (unsent), and Teams/Skype chats.
GRAPH_LEFT_OUT = ("junkemail", "deleteditems", "drafts", "outbox", "conversationhistory")
GRAPH_WELL_KNOWN = ("inbox", "sentitems", *GRAPH_LEFT_OUT)


def graph_folders_in_scope(listing: Sequence[tuple[GraphFolder, str]],
                           known: Mapping[str, str], selected: Sequence[str] | None
                           ) -> list[tuple[str, str]]:
    """(folder id, label) of the folders to sync, the Inbox first, then by label. A label is
    the folder's path of display names (`Inbox`, `Sent Items`, `Inbox/Projects`). `selected`
    None (scope `all`): every folder except the well-known left-out ones (`GRAPH_LEFT_OUT`),
    folders named like Junk/Trash/Drafts at the top level (as for IMAP), and the folders
    below those. Else the selected folders (exact labels) and Sent Items (S1: the user's sent
    mail of in-scope threads; the domain keeps only those); when a selected label names no
    folder it is a category, which any message may carry, so every folder of scope `all` is
    read and the domain keeps the messages with a selected folder or category."""
    out_ids = {known[name] for name in GRAPH_LEFT_OUT if name in known}
    out_paths = [path for folder, path in listing
                 if folder.id in out_ids or ("/" not in path and path.casefold()
                                             in JUNK_NAMES | TRASH_NAMES | DRAFT_NAMES)]
    every = [(f.id, path) for f, path in listing
             if not any(path == p or path.startswith(p + "/") for p in out_paths)]
    chosen = every
    if selected is not None and set(selected) <= {path for _, path in listing}:
        wanted = set(selected)
        sent = known.get("sentitems")
        chosen = [(f.id, path) for f, path in listing if path in wanted or f.id == sent]
    inbox = known.get("inbox")
    return sorted(dict(chosen).items(), key=lambda item: (item[0] != inbox, item[1]))


@dataclass(frozen=True)
class GraphCursor:
    """A mailbox's Graph cursor: per folder id its delta or next link (`links`), the S2 window of
    folders in their first round next to an upgraded cursor (`windows`), and the ids of the
    well-known folders (`known`: they never change, so an idle sync does not ask again).
    `legacy`: the bare Inbox link of earlier versions (its folder is the Inbox, `links[""]`)."""

    links: dict[str, str]
    windows: dict[str, datetime] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)
    legacy: bool = False


def encode_graph_cursor(cursor: GraphCursor) -> str:
    """`{"g": {folder id: link}, "k": {name: id}, "w": {folder id: since}}` (compact, sorted;
    `w` only while a window is open)."""
    doc: dict[str, Any] = {"g": dict(sorted(cursor.links.items())),
                           "k": dict(sorted(cursor.known.items()))}
    if cursor.windows:
        doc["w"] = {k: v.astimezone(UTC).isoformat() for k, v in sorted(cursor.windows.items())}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def decode_graph_cursor(cursor: str) -> GraphCursor:
    """A stored cursor; a bare https link is the Inbox-only cursor of earlier versions.
    Anything else unreadable -> ValueError."""
    if cursor.startswith("https://"):
        return GraphCursor({"": cursor}, legacy=True)
    try:
        doc = json.loads(cursor)
        if not isinstance(doc, dict) or set(doc) - {"g", "k", "w"} \
                or not isinstance(doc.get("g"), dict):
            raise ValueError("not a folder map")
        links = {str(k): v for k, v in doc["g"].items()}
        if not all(k and isinstance(v, str) and v.startswith("https://")
                   for k, v in links.items()):
            raise ValueError("a folder without a link")
        known = {str(k): v for k, v in (doc.get("k") or {}).items()}
        if not all(isinstance(v, str) and v for v in known.values()):
            raise ValueError("a well-known folder without an id")
        windows = {str(k): datetime.fromisoformat(v) for k, v in (doc.get("w") or {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a Graph cursor: {exc}") from None
    return GraphCursor(links, windows, known)


class GraphSource:
    """An Outlook mailbox's folders in its S1 scope, each with Graph's per-folder message delta
    (`/mailFolders/{id}/messages/delta`) and its own link in one mailbox cursor
    (`encode_graph_cursor`). Messages are labelled `[folder path, *categories]`.

    `changes` lists the folder tree each time (the well-known folders' ids are kept in the
    cursor) and reads one delta page per folder. A folder new to the cursor starts a new
    delta round, which lists the folder whole (mail moved into it keeps its history, L3/L4);
    next to the Inbox-only cursor of earlier versions (a bare link: it continues as the
    Inbox's) the other folders' first rounds keep only mail inside the S2 window. A folder that
    is gone or out of scope drops out; nothing of it is reported deleted (L4). A message
    removed from a folder is asked for by its immutable id: still in a synced folder -> it
    moved (its new folder reports it: a label update), else (gone, in Deleted Items or Junk,
    out of scope) -> deleted (L5 sees the batch). `resync` backfills folder by folder (Inbox
    first, each most recent first), then drains each folder's delta to its deltaLink."""

    def __init__(self, client: GraphClient, *, folders: Sequence[str] | None = None,
                 backfill_days: int = 30, clock: Callable[[], datetime] | None = None,
                 push: PushChannel | None = None) -> None:
        self.client, self.folders, self.backfill_days = client, folders, backfill_days
        self.clock = clock or (lambda: datetime.now(UTC))
        self.push = push

    def _scope(self, address: str, known: Mapping[str, str] | None = None
               ) -> tuple[list[tuple[str, str]], dict[str, str]]:
        known = dict(known) if known and "inbox" in known else \
            self.client.well_known(address, GRAPH_WELL_KNOWN)
        return graph_folders_in_scope(self.client.folders(address), known, self.folders), known

    @staticmethod
    def _labelled(messages: Sequence[MailMessage], label: str) -> list[MailMessage]:
        return [m.model_copy(update={"labels": [label, *(x for x in m.labels if x != label)]})
                for m in messages]

    def changes(self, address: str, cursor: str) -> Changes:
        try:
            stored = decode_graph_cursor(cursor)
        except ValueError:
            raise CursorExpired("graph", "the stored cursor is not a Graph cursor") from None
        scope, known = self._scope(address, stored.known)
        links, legacy = stored.links, stored.legacy
        if legacy:
            links = {known["inbox"]: links[""]}
        since = self.clock() - timedelta(days=self.backfill_days)
        new_links: dict[str, str] = {}
        new_windows: dict[str, datetime] = {}
        messages: list[MailMessage] = []
        removed: list[str] = []
        skipped: list[tuple[str, str]] = []
        more = False
        for folder, label in scope:
            link = links.get(folder)
            window = stored.windows.get(folder) or (since if legacy and link is None else None)
            page = self.client.changes_since(address, link, folder=folder)
            found = page.messages if window is None else \
                [m for m in page.messages if m.sent_at >= window]
            messages += self._labelled(found, label)
            removed += [*page.deleted_ids, *page.left_scope_ids]
            skipped += [(s.id, s.reason) for s in page.skipped]
            new_links[folder] = page.new_cursor
            more = more or page.more
            if window is not None and page.more:
                new_windows[folder] = window
        synced = {f for f, _ in scope}
        present = {m.id for m in messages}
        deleted = [i for i in dict.fromkeys(removed) if i not in present
                   and self.client.message_folder(address, i) not in synced]
        return Changes(messages=messages, deleted_ids=deleted, more=more, skipped=skipped,
                       new_cursor=encode_graph_cursor(GraphCursor(new_links, new_windows,
                                                                  known)))

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        scope, known = self._scope(address)
        for folder, label in scope:
            token: str | None = None
            while True:
                page = self.client.backfill(address, since, token, folder=folder)
                yield ResyncPage(self._labelled(page.messages, label),
                                 skipped=[(s.id, s.reason) for s in page.skipped])
                token = page.next_page_token
                if token is None:
                    break
        links: dict[str, str] = {}
        for folder, label in scope:
            change = self.client.changes_since(address, None, folder=folder)
            while True:
                inside = [m for m in change.messages if m.sent_at >= since]
                if inside:
                    yield ResyncPage(self._labelled(inside, label))
                if not change.more:
                    break
                change = self.client.changes_since(address, change.new_cursor)
            links[folder] = change.new_cursor
        yield ResyncPage([], cursor=encode_graph_cursor(GraphCursor(links, known=known)))

    def close(self) -> None:
        self.client.close()
