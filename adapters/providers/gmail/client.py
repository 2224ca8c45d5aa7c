"""Gmail API v1 client: the `ProviderClient` port over httpx (issue #4).

- `changes_since(mailbox, cursor)`: users.history.list from `startHistoryId`, paged by
  `pageToken`; every message added or relabelled is fetched with users.messages.get
  `format=full` (its current labels and read flag). The cursor is the decimal history id at a
  round's end, `<startHistoryId>:<pageToken>` mid-round; `None` starts at users.getProfile's
  historyId (an empty page).
- `backfill(mailbox, since, page_token)`: users.messages.list with `q=after:<epoch s>`, most
  recent first as Gmail lists them, each message fetched `format=full`.
- `fetch_message(mailbox, id)`: users.messages.get `format=full`; `None` when it is gone.
- `watch(mailbox, topic, label_ids)` / `stop(mailbox)`: users.watch (push notifications to a
  Cloud Pub/Sub topic, optionally only for changes of the given label ids:
  `labelFilterBehavior: include`) and users.stop. The watch's `historyId` and `expiration` are
  answered as a `PushSubscription` (no id: a Gmail mailbox has one watch).

Errors: 404 on history.list is `CursorExpired` (Gmail's answer for a startHistoryId older than
it keeps), unless users.getProfile for the mailbox also fails with 404 / 400: then `MailboxGone`.
A 400 or 404 elsewhere is checked the same way (a missing message is `None`, or deleted in a
change page). Throttling and the rest: see `adapters.providers.http`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any
from urllib.parse import quote

import httpx

from adapters.errors import CursorExpired, MailboxGone, MalformedWebhook
from adapters.providers.client import BackfillPage, ChangePage, PushSubscription, SkippedMessage
from adapters.providers.gmail.payloads import gmail_message_to_mail, parse_gmail_history
from adapters.providers.http import ProviderHttp
from domain.events import MailMessage

DEFAULT_GMAIL_API_URL = "https://gmail.googleapis.com"
MAILBOX_STATUSES = (400, 404)


class GmailClient:
    def __init__(self, access_token: Callable[[], str], base_url: str = DEFAULT_GMAIL_API_URL, *,
                 page_size: int = 100, timeout: float = 30.0, max_retries: int = 3,
                 max_retry_wait: float = 60.0, backoff: float = 1.0,
                 verify: SSLContext | bool = True,
                 refresh: Callable[[], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = ProviderHttp("gmail", base_url, access_token, timeout=timeout,
                                  max_retries=max_retries, max_retry_wait=max_retry_wait,
                                  backoff=backoff, verify=verify, refresh=refresh,
                                  transport=transport)
        self.page_size = page_size

    def close(self) -> None:
        self._http.close()

    def _user(self, mailbox: str, *path: str) -> str:
        parts = [quote(mailbox, safe="@"), *(quote(p, safe="") for p in path)]
        return self._http.url("gmail/v1/users/" + "/".join(parts))

    def _mailbox_gone(self, mailbox: str) -> MailboxGone | None:
        """Asked after a 400/404: is it the mailbox itself (users.getProfile fails too)?"""
        response = self._http.get(self._user(mailbox, "profile"))
        if response.status_code not in MAILBOX_STATUSES:
            return None
        failure = self._http.failure(response, "users.getProfile")
        return MailboxGone("gmail", failure.reason, response.status_code)

    def current_cursor(self, mailbox_address: str) -> str:
        """The mailbox's current history id (users.getProfile), as a cursor."""
        response = self._http.get(self._user(mailbox_address, "profile"))
        if response.status_code in MAILBOX_STATUSES:
            failure = self._http.failure(response, "users.getProfile")
            raise MailboxGone("gmail", failure.reason, response.status_code)
        if not response.is_success:
            raise self._http.failure(response, "users.getProfile")
        history_id = self._http.json(response, "users.getProfile").get("historyId")
        if not isinstance(history_id, (str, int)) or not str(history_id).isdigit():
            raise self._http.error("users.getProfile: historyId missing or not decimal")
        return str(history_id)

    def changes_since(self, mailbox_address: str, cursor: str | None) -> ChangePage:
        if cursor is None:
            return ChangePage(messages=[], deleted_ids=[], more=False,
                              new_cursor=self.current_cursor(mailbox_address))
        start, _, page_token = cursor.partition(":")
        if not start.isdigit():
            raise ValueError(f"not a Gmail cursor: {cursor!r}")
        params: dict[str, str | int] = {"startHistoryId": start, "maxResults": self.page_size}
        if page_token:
            params["pageToken"] = page_token
        response = self._http.get(self._user(mailbox_address, "history"), params)
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox_address)
            if gone is not None:
                raise gone
            if response.status_code == 404:
                failure = self._http.failure(response, "users.history.list")
                raise CursorExpired("gmail", f"startHistoryId {start} expired: {failure.reason}",
                                    404)
        if not response.is_success:
            raise self._http.failure(response, "users.history.list")
        try:
            page = parse_gmail_history(response.content)
        except MalformedWebhook as exc:
            raise self._http.error(f"users.history.list: unreadable response: {exc}") from None
        wanted = dict.fromkeys([*page.message_ids_added,
                                *(change.message_id for change in page.label_changes)])
        deleted = list(page.message_ids_deleted)
        messages: list[MailMessage] = []
        skipped: list[SkippedMessage] = []
        for message_id in wanted:
            try:
                message = self._message(mailbox_address, message_id, probe=False)
            except MalformedWebhook as exc:
                skipped.append(SkippedMessage(id=message_id, reason=str(exc)))
                continue
            if message is None:  # deleted since the history record was written
                deleted.append(message_id)
            else:
                messages.append(message)
        more = page.next_page_token is not None
        return ChangePage(
            messages=messages, deleted_ids=deleted, skipped=skipped, more=more,
            new_cursor=f"{start}:{page.next_page_token}" if more else str(page.history_id))

    def backfill(self, mailbox_address: str, since: datetime,
                 page_token: str | None = None) -> BackfillPage:
        # `after:` takes epoch seconds; one second early, as a duplicate is harmless and a miss
        # is not (the runner's SyncMessage is idempotent per provider id).
        params: dict[str, str | int] = {
            "q": f"after:{math.floor(since.timestamp()) - 1}", "maxResults": self.page_size}
        if page_token:
            params["pageToken"] = page_token
        response = self._http.get(self._user(mailbox_address, "messages"), params)
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox_address)
            if gone is not None:
                raise gone
        if not response.is_success:
            raise self._http.failure(response, "users.messages.list")
        listing = self._http.json(response, "users.messages.list")
        ids = _listed_ids(listing.get("messages"))
        if ids is None:
            raise self._http.error("users.messages.list: messages is not a list of {id}")
        messages: list[MailMessage] = []
        skipped: list[SkippedMessage] = []
        for message_id in ids:
            try:
                message = self._message(mailbox_address, message_id, probe=False)
            except MalformedWebhook as exc:
                skipped.append(SkippedMessage(id=message_id, reason=str(exc)))
                continue
            if message is not None:
                messages.append(message)
        token = listing.get("nextPageToken")
        return BackfillPage(messages=messages, skipped=skipped,
                            next_page_token=token if isinstance(token, str) and token else None)

    def watch(self, mailbox_address: str, topic: str, label_ids: Sequence[str] = ()
              ) -> PushSubscription:
        """users.watch: Gmail publishes the mailbox's changes to `topic` (`projects/<p>/topics/
        <t>`) until the answer's expiration (about 7 days; call again to extend). With
        `label_ids`, only changes of messages carrying one of them are published."""
        body: dict[str, object] = {"topicName": topic}
        if label_ids:
            body["labelIds"] = list(label_ids)
            body["labelFilterBehavior"] = "include"
        response = self._http.request("POST", self._user(mailbox_address, "watch"), json=body)
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox_address)
            if gone is not None:
                raise gone
        if not response.is_success:
            raise self._http.failure(response, "users.watch")
        answer = self._http.json(response, "users.watch")
        history_id, expiration = answer.get("historyId"), answer.get("expiration")
        if not isinstance(history_id, (str, int)) or not str(history_id).isdigit():
            raise self._http.error("users.watch: historyId missing or not decimal")
        if not isinstance(expiration, (str, int)) or not str(expiration).isdigit():
            raise self._http.error("users.watch: expiration missing or not epoch milliseconds")
        resource = f"users/{mailbox_address} topic {topic}"
        if label_ids:
            resource += f" labels {','.join(label_ids)}"
        return PushSubscription(id=None, resource=resource, history_id=int(history_id),
                                expires_at=datetime.fromtimestamp(int(expiration) / 1000, UTC))

    def stop(self, mailbox_address: str) -> None:
        """users.stop: no more push notifications for the mailbox."""
        response = self._http.request("POST", self._user(mailbox_address, "stop"))
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox_address)
            if gone is not None:
                raise gone
        if not response.is_success:
            raise self._http.failure(response, "users.stop")

    def fetch_message(self, mailbox_address: str, message_id: str) -> MailMessage | None:
        """Raises MalformedWebhook when the message cannot become a MailMessage."""
        return self._message(mailbox_address, message_id, probe=True)

    def _message(self, mailbox: str, message_id: str, *, probe: bool) -> MailMessage | None:
        response = self._http.get(self._user(mailbox, "messages", message_id),
                                  {"format": "full"})
        if response.status_code in MAILBOX_STATUSES:
            gone = self._mailbox_gone(mailbox) if probe or response.status_code == 400 else None
            if gone is not None:
                raise gone
            if response.status_code == 404:
                return None
        if not response.is_success:
            raise self._http.failure(response, "users.messages.get")
        return gmail_message_to_mail(response.content)


def _listed_ids(value: Any) -> list[str] | None:
    """The ids of messages.list's `messages` ([] when absent, as Gmail omits it when empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    ids: list[str] = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            return None
        ids.append(entry["id"])
    return ids
