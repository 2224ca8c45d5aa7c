"""One shape for every provider, as the sync workers use them (issue #4).

`MailSource.changes(address, cursor)` -> `Changes` (new or changed messages in their current
state, flag updates, deletions, the cursor to store, whether more follows at once);
`MailSource.resync(address, since)` -> pages of the backfill window (S2), most recent first, the
last page carrying the cursor to continue from. Errors are the `adapters.errors` types the
clients raise (`CursorExpired`, `MailboxGone`, `ProviderError`).

`MailSource.push` is the mailbox's push channel (`PushChannel`: subscribe, renew, unsubscribe)
when the provider has one: a Graph subscription, a Gmail watch; IMAP has none (polled).

This module is the port and what the implementations share (`ProviderSource` over the
`ProviderClient` port, `scope_folders` and the Junk/Trash/Drafts names); the implementations
live with their provider: `adapters.providers.gmail.source` (`gmail_source`: a
`ProviderSource` with the Gmail watch), `adapters.providers.graph.source` (`GraphSource`, every
folder in the mailbox's S1 scope) and `adapters.providers.imap.source` (`ImapSource`, every
folder in scope).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from adapters.providers.client import ProviderClient, PushSubscription
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


# -- shared by the IMAP and Graph scopes (S1) ----------------------------------------------------
# Junk and Trash by name (case-insensitive), for servers that do not flag them \Junk / \Trash
# (no SPECIAL-USE, or folders a mail client made itself): at the top level or right below INBOX.
JUNK_NAMES = frozenset({"junk", "junk e-mail", "junk email", "junk-e-mail", "spam", "bulk mail"})
TRASH_NAMES = frozenset({"trash", "deleted items", "deleted messages", "papierkorb",
                         "gelöschte elemente", "gelöschte objekte"})
# Drafts are not mail anyone exchanged (and unsent text must not reach other viewers).
DRAFT_NAMES = frozenset({"drafts", "draft", "entwürfe", "brouillons"})


def scope_folders(scope: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The folders a mailbox's S1 scope selects by name; None for every folder (mode "all")."""
    if scope.get("mode") == "labels":
        return tuple(str(label) for label in scope.get("labels") or ())
    return None
