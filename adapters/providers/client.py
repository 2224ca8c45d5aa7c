"""The provider-client port: what the sync workers ask of a mail provider (issue #4).

Two adapters implement it over HTTP: `adapters.providers.gmail.client.GmailClient` (Gmail API v1)
and `adapters.providers.graph.client.GraphClient` (Microsoft Graph v1.0, one mail folder per
client). Both return our `MailMessage` values and raise only `adapters.errors` types:
`CursorExpired`, `MailboxGone`, `ProviderThrottled` (after bounded retries) and `ProviderError` for the rest.

Cursors are opaque strings owned by the adapter that made them: store the `new_cursor` of every
page (it resumes mid-round when `more` is true) and pass it back unchanged. `None` starts: for
Gmail, at the mailbox's current history id (an empty page; the past comes from `backfill`); for
Graph, a new delta round, whose first pages enumerate the whole folder.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from domain.events import MailMessage


class SkippedMessage(BaseModel):
    """A message the provider returned that cannot become a MailMessage (e.g. no From): the page
    goes on without it, the reason is for the sync status and the logs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    reason: str


class ChangePage(BaseModel):
    """One page of changes. `messages`: new or changed messages, each in its current state
    (labels, read flag). `deleted_ids`: gone at the provider. `left_scope_ids`: still exist but
    left the synced scope (Graph: moved out of the client's folder; Gmail never). `more`: call
    again with `new_cursor` at once; otherwise `new_cursor` is the end of this round."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    messages: list[MailMessage]
    deleted_ids: list[str]
    left_scope_ids: list[str] = []
    skipped: list[SkippedMessage] = []
    new_cursor: str
    more: bool


class BackfillPage(BaseModel):
    """Messages received at or after `since`, most recent first; `next_page_token` (opaque) for
    the next, older page, `None` when done."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    messages: list[MailMessage]
    skipped: list[SkippedMessage] = []
    next_page_token: str | None = None


class PushSubscription(BaseModel):
    """A mailbox's push channel as the provider confirmed it: a Microsoft Graph subscription
    (`id`, its `resource`) or a Gmail watch (no id; `resource` names the mailbox, the Pub/Sub
    topic and any label filter; `history_id` is the mailbox's history id when the watch
    started). `expires_at`: when the provider stops sending unless it is renewed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str | None
    resource: str
    expires_at: datetime
    history_id: int | None = None


class ProviderClient(Protocol):
    def changes_since(self, mailbox_address: str, cursor: str | None) -> ChangePage: ...

    def backfill(self, mailbox_address: str, since: datetime,
                 page_token: str | None = None) -> BackfillPage: ...

    def fetch_message(self, mailbox_address: str, message_id: str) -> MailMessage | None:
        """The message in its current state; `None` when the provider no longer has it."""
        ...

    def close(self) -> None: ...
