"""One shape for every provider, as the sync workers use them (issue #4).

`MailSource.changes(address, cursor)` -> `Changes` (new or changed messages in their current
state, flag updates, deletions, the cursor to store, whether more follows at once);
`MailSource.resync(address, since)` -> pages of the backfill window (S2), most recent first, the
last page carrying the cursor to continue from. Gmail wraps a `ProviderClient`; Outlook
(`GraphSource`) wraps `GraphClient` on every folder in the mailbox's S1 scope
(`graph_folders_in_scope`); IMAP wraps `ImapClient` on every folder in scope
(`folders_in_scope`). Errors are
the `adapters.errors` types the clients raise (`CursorExpired`, `MailboxGone`, `ProviderError`).

`MailSource.push` is the mailbox's push channel (`PushChannel`: subscribe, renew, unsubscribe)
when the provider has one: a Graph subscription, a Gmail watch; IMAP has none (polled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from adapters.errors import CursorExpired, MailboxGone
from adapters.providers.client import ProviderClient, PushSubscription
from adapters.providers.gmail.client import GmailClient
from adapters.providers.graph.client import GraphClient
from adapters.providers.graph.payloads import GraphFolder
from adapters.providers.imap.client import (
    INBOX,
    FolderInfo,
    FolderState,
    ImapAccount,
    ImapClient,
    ImapCursor,
    decode_folder_cursors,
    encode_folder_cursors,
    format_uid_set,
    is_single_folder_cursor,
)
from domain.events import MailMessage


@dataclass(frozen=True)
class FlagUpdate:
    """A known message whose flags changed (IMAP reports flags, not whole messages)."""

    id: str
    read: bool | None = None
    labels: list[str] | None = None


@dataclass(frozen=True)
class Changes:
    messages: list[MailMessage]
    deleted_ids: list[str]
    new_cursor: str
    more: bool = False
    updates: list[FlagUpdate] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (provider id, reason)


@dataclass(frozen=True)
class ResyncPage:
    messages: list[MailMessage]
    cursor: str | None = None  # set on the last page: continue with `changes` from here
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PushTarget:
    """Where a provider is to send a mailbox's notifications, and until when it is asked to.
    Graph: `notification_url` (also the lifecycle URL: the receiver reads both kinds) and the
    `client_state` the receiver expects; Gmail: the Pub/Sub `topic` (Gmail sets its own expiry).
    `labels`: the mailbox's S1 label scope (Gmail filters on them; Graph cannot)."""

    expires_at: datetime
    notification_url: str | None = None
    client_state: str | None = None
    topic: str | None = None
    labels: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the clientState is a secret
        return f"PushTarget(expires_at={self.expires_at!r}, url={self.notification_url!r}, " \
               f"topic={self.topic!r}, labels={self.labels!r})"


class PushChannel(Protocol):
    def subscribe(self, address: str, target: PushTarget) -> PushSubscription:
        """A new subscription / watch."""
        ...

    def renew(self, address: str, subscription_id: str | None, target: PushTarget
              ) -> PushSubscription | None:
        """The subscription extended to `target.expires_at`; None when the provider no longer
        has it (create a new one)."""
        ...

    def unsubscribe(self, address: str, subscription_id: str | None) -> bool:
        """False when the provider did not have it any more."""
        ...


class GraphPush:
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


class GmailPush:
    """The Gmail watch of a mailbox (renewing is watching again)."""

    def __init__(self, client: GmailClient) -> None:
        self.client = client

    def subscribe(self, address: str, target: PushTarget) -> PushSubscription:
        if not target.topic:
            raise ValueError("a Gmail watch needs a Pub/Sub topic")
        return self.client.watch(address, target.topic, target.labels)

    def renew(self, address: str, subscription_id: str | None, target: PushTarget
              ) -> PushSubscription | None:
        return self.subscribe(address, target)

    def unsubscribe(self, address: str, subscription_id: str | None) -> bool:
        self.client.stop(address)
        return True


class MailSource(Protocol):
    push: PushChannel | None

    def changes(self, address: str, cursor: str) -> Changes: ...

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]: ...

    def close(self) -> None: ...


class ProviderSource:
    """Gmail or Graph behind the `ProviderClient` port.

    Resync: Gmail takes its start cursor (the current historyId) *before* the backfill, so mail
    arriving during the backfill comes with the next changes. Graph has no "now" cursor: the
    backfill runs first, then a new delta round is drained to its deltaLink (its enumeration
    includes anything that arrived meanwhile; its messages inside the window are synced too,
    duplicates are one message by S14). Deletions in a resync are never reported (L3, L4)."""

    def __init__(self, client: ProviderClient, *, cursor_first: bool,
                 push: PushChannel | None = None) -> None:
        self.client, self.cursor_first, self.push = client, cursor_first, push

    def changes(self, address: str, cursor: str) -> Changes:
        page = self.client.changes_since(address, cursor)
        return Changes(messages=page.messages, deleted_ids=page.deleted_ids,
                       new_cursor=page.new_cursor, more=page.more,
                       skipped=[(s.id, s.reason) for s in page.skipped])

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        start: str | None = None
        if self.cursor_first:
            start, pages = self._drain(address, since)
            yield from pages
        token: str | None = None
        while True:
            page = self.client.backfill(address, since, token)
            yield ResyncPage(page.messages, skipped=[(s.id, s.reason) for s in page.skipped])
            token = page.next_page_token
            if token is None:
                break
        if start is None:
            start, pages = self._drain(address, since)
            yield from pages
        yield ResyncPage([], cursor=start)

    def _drain(self, address: str, since: datetime) -> tuple[str, list[ResyncPage]]:
        pages: list[ResyncPage] = []
        page = self.client.changes_since(address, None)
        while True:
            inside = [m for m in page.messages if m.sent_at >= since]
            if inside:
                pages.append(ResyncPage(inside))
            if not page.more:
                return page.new_cursor, pages
            page = self.client.changes_since(address, page.new_cursor)

    def close(self) -> None:
        self.client.close()


# -- IMAP: every folder in scope (S1) --------------------------------------------------------------
# Junk and Trash by name (case-insensitive), for servers that do not flag them \Junk / \Trash
# (no SPECIAL-USE, or folders a mail client made itself): at the top level or right below INBOX.
JUNK_NAMES = frozenset({"junk", "junk e-mail", "junk email", "junk-e-mail", "spam", "bulk mail"})
TRASH_NAMES = frozenset({"trash", "deleted items", "deleted messages", "papierkorb",
                         "gelöschte elemente", "gelöschte objekte"})
# Drafts are not mail anyone exchanged (and unsent text must not reach other viewers); `\All`
# and `\Flagged` are virtual folders that hold copies of mail in the real ones.
DRAFT_NAMES = frozenset({"drafts", "draft", "entwürfe", "brouillons"})
_UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})
_SPECIAL_LEFT_OUT = frozenset({"\\junk", "\\trash", "\\drafts", "\\all", "\\flagged"})


def scope_folders(scope: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The folders a mailbox's S1 scope selects by name; None for every folder (mode "all")."""
    if scope.get("mode") == "labels":
        return tuple(str(label) for label in scope.get("labels") or ())
    return None


def _is_junk_or_trash(folder: FolderInfo) -> bool:
    if folder.flags & _SPECIAL_LEFT_OUT:
        return True
    parts = folder.name.split(folder.delimiter) if folder.delimiter else [folder.name]
    top = len(parts) == 1 or (len(parts) == 2 and parts[0].upper() == INBOX)
    return top and parts[-1].casefold() in JUNK_NAMES | TRASH_NAMES | DRAFT_NAMES


def folders_in_scope(listing: Sequence[FolderInfo], selected: Sequence[str] | None
                     ) -> list[str]:
    """The folders to sync, INBOX first, then by name. `selected` None (scope "all"): every
    selectable folder except Junk, Trash and Drafts (flagged `\\Junk`/`\\Trash`/`\\Drafts`,
    or named like them at the top level or below INBOX), the virtual `\\All` and `\\Flagged`,
    and the folders below those; else the selected folders
    that exist and are selectable (exact names: they are also the messages' labels)."""
    selectable = [f for f in listing if not f.flags & _UNSELECTABLE]
    if selected is not None:
        wanted = set(selected)
        names = {f.name for f in selectable if f.name in wanted}
    else:
        left_out = [f for f in listing if _is_junk_or_trash(f)]
        names = {f.name for f in selectable
                 if not any(f.name == x.name or (x.delimiter is not None
                                                 and f.name.startswith(x.name + x.delimiter))
                            for x in left_out)}
    return sorted(names, key=lambda name: (name != INBOX, name))


class ImapSource:
    """An IMAP account's folders in the mailbox's scope (a connection per call: polls are
    minutes apart).

    The cursor is one `ImapCursor` per folder (`encode_folder_cursors`; the INBOX-only cursor of
    earlier versions is read as INBOX's). `changes` LISTs the folders each time: a folder in the
    cursor continues from its cursor; a folder new to it was created (or came into scope) after
    the last sync, so it is read whole: mail the user moved into it keeps its history however
    old it is (L3, L4; its old copies are reported deleted in the same page). Only next to an
    INBOX-only cursor of earlier versions are the other folders backfilled within the S2 window
    (`backfill_days` before now), as on a first sync. A folder that is gone or out
    of scope drops out of the cursor and nothing of it is reported deleted (L4). A new
    UIDVALIDITY in any folder (or a cursor that cannot be read) -> `CursorExpired`: the caller
    resyncs the mailbox. All folders come as one page, so a message moved between two synced
    folders is one batch: its new copy and the deletion of the old one.

    `resync` reads the INTERNALDATEs of every folder's window first, then fetches the messages
    in pages of `page_size`, most recent first across folders, and ends with the combined
    cursor. `MailboxGone` for INBOX is the account's (reported gone, L4); another folder that
    vanishes between LIST and SELECT is skipped."""

    push: PushChannel | None = None  # IMAP is polled

    def __init__(self, account: ImapAccount, *, folders: Sequence[str] | None = None,
                 backfill_days: int = 30, clock: Callable[[], datetime] | None = None,
                 page_size: int = 200) -> None:
        self.account, self.folders, self.backfill_days = account, folders, backfill_days
        self.clock = clock or (lambda: datetime.now(UTC))
        self.page_size = page_size

    def changes(self, address: str, cursor: str) -> Changes:
        try:
            known = decode_folder_cursors(cursor)
        except ValueError:
            raise CursorExpired("imap", "the stored cursor is not an IMAP cursor") from None
        since = self.clock() - timedelta(days=self.backfill_days)
        if not is_single_folder_cursor(cursor):
            since = datetime(1970, 1, 1, tzinfo=UTC)  # a new folder is read whole
        cursors: dict[str, ImapCursor] = {}
        messages: list[MailMessage] = []
        deleted: list[str] = []
        updates: list[FlagUpdate] = []
        skipped: list[tuple[str, str]] = []
        with ImapClient.connect(self.account) as client:
            for folder in folders_in_scope(client.folders(), self.folders):
                before = known.get(folder)
                try:
                    found = client.changes_since(folder, before) if before is not None \
                        else client.backfill(folder, since)
                except MailboxGone:
                    if folder == INBOX:
                        raise
                    continue  # gone since LIST: as if it were not listed (L4)
                cursors[folder] = found.cursor
                messages += found.messages
                deleted += found.deleted
                updates += [FlagUpdate(f.id, read=f.read) for f in found.flag_changes]
                skipped += [(r.id, r.reason) for r in found.rejections]
        return Changes(messages=messages, deleted_ids=deleted,
                       new_cursor=encode_folder_cursors(cursors), updates=updates,
                       skipped=skipped)

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        with ImapClient.connect(self.account) as client:
            states: dict[str, FolderState] = {}
            plan: list[tuple[datetime, str, int]] = []
            for folder in folders_in_scope(client.folders(), self.folders):
                try:
                    state, dated = client.dated_since(folder, since)
                except MailboxGone:
                    if folder == INBOX:
                        raise
                    continue
                states[folder] = state
                plan += [(when, folder, uid) for when, uid in dated]
            plan.sort(reverse=True)  # most recent first (INTERNALDATE), across folders
            parsed: dict[str, set[int]] = {folder: set() for folder in states}
            for start in range(0, len(plan), self.page_size):
                yield self._page(client, states, plan[start:start + self.page_size], parsed)
        cursors = {folder: ImapCursor(
            state.uidvalidity,
            max([state.uidnext, *(u + 1 for _, f, u in plan if f == folder)]),
            state.highestmodseq, format_uid_set(parsed[folder]))
            for folder, state in states.items()}
        yield ResyncPage([], cursor=encode_folder_cursors(cursors))

    def _page(self, client: ImapClient, states: dict[str, FolderState],
              page: list[tuple[datetime, str, int]], parsed: dict[str, set[int]]) -> ResyncPage:
        """One page of the plan, fetched folder by folder, returned in the plan's order."""
        by_folder: dict[str, list[int]] = {}
        for _, folder, uid in page:
            by_folder.setdefault(folder, []).append(uid)
        found: dict[tuple[str, int], MailMessage] = {}
        skipped: list[tuple[str, str]] = []
        for folder, uids in by_folder.items():
            if folder not in states:
                continue
            try:
                messages, rejections, done = client.fetch_messages(
                    folder, states[folder].uidvalidity, uids)
            except MailboxGone:
                if folder == INBOX:
                    raise
                del states[folder]  # deleted during the resync: left out, as in `changes`
                continue
            parsed[folder] |= done
            found.update({(folder, int(m.id.rsplit("/", 1)[1])): m for m in messages})
            skipped += [(r.id, r.reason) for r in rejections]
        return ResyncPage([found[(f, u)] for _, f, u in page if (f, u) in found],
                          skipped=skipped)

    def close(self) -> None:
        pass


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
