"""Microsoft Graph v1.0 mail client: the `ProviderClient` port over httpx (issue #4).

Graph's message delta is per folder, so a client syncs one folder (`folder`, default `inbox`;
the runners make one per folder they sync, each with its own cursor).

- `changes_since(mailbox, cursor)`: `GET /users/{mailbox}/mailFolders/{folder}/messages/delta`
  (`$select` of the fields a MailMessage needs), then the `@odata.nextLink` / `@odata.deltaLink`
  it returns. The cursor is that link (opaque); `None` starts a new round, whose pages list the
  whole folder. A delta item without the fields `graph_message_to_mail` needs (a `$select`ed or
  trimmed page) is fetched with `GET /users/{mailbox}/messages/{id}`. `@removed` with reason
  `deleted` → `deleted_ids`; `changed` (moved out of the folder) → `left_scope_ids`.
- `backfill(mailbox, since, page_token)`: the folder's messages with
  `receivedDateTime ge since`, `$orderby=receivedDateTime desc`, paged by `@odata.nextLink`.
- `fetch_message(mailbox, id)`: the message with `internetMessageHeaders` (In-Reply-To,
  References); `None` when it is gone.

- `create_subscription(mailbox, …)` / `renew_subscription(id, expires_at)` /
  `delete_subscription(id)`: change notifications (`POST /subscriptions`, changeType
  `created,updated,deleted`) on `/users/{mailbox}/messages` (or one folder's messages), with a
  `notificationUrl`, a `lifecycleNotificationUrl` and the `clientState` the receiver checks.
  Graph validates the notification URL during the POST (the receiver answers the handshake).
  Renewing or deleting a subscription Graph no longer has answers None / False.

Requests ask for immutable ids (`Prefer: IdType="ImmutableId"`: a move keeps the id) and text
bodies (`Prefer: outlook.body-content-type="text"`). The base URL must be https: the delta
parser accepts only https links, and every link must lie under the base URL (else refused).

Errors: 410 Gone, or error code `syncStateNotFound` / `resyncRequired` → `CursorExpired`. Error
code `MailboxNotEnabledForRESTAPI` / `MailboxNotSupportedForRESTAPI` / `ErrorInvalidUser` →
`MailboxGone`; any other 404 (e.g. `ErrorItemNotFound`, `ResourceNotFound`) is `MailboxGone` only
if the mailbox's inbox folder is also 404 (else a missing message is `None`, a missing folder
`ProviderError`). Throttling and the rest: see `adapters.providers.http`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ssl import SSLContext
from typing import Any
from urllib.parse import quote

import httpx

from adapters.deliveries.webhooks import json_object, timestamp
from adapters.errors import CursorExpired, MailboxGone, MalformedWebhook
from adapters.providers.client import BackfillPage, ChangePage, PushSubscription, SkippedMessage
from adapters.providers.graph.payloads import (
    GraphFolder,
    graph_attachments,
    graph_folders,
    graph_message_to_mail,
    parse_graph_delta,
)
from adapters.providers.http import ProviderHttp, error_info
from domain.events import Attachment, MailMessage

DEFAULT_GRAPH_API_URL = "https://graph.microsoft.com/v1.0"
SELECT = ("id,conversationId,internetMessageId,from,sender,toRecipients,ccRecipients,"
          "bccRecipients,subject,body,sentDateTime,receivedDateTime,isRead,categories,"
          "hasAttachments,parentFolderId")
# S8 needs an attachment's name, size and type only: its content bytes are never fetched
ATTACHMENT_SELECT = "id,name,size,contentType,isInline"
CURSOR_CODES = frozenset({"syncstatenotfound", "resyncrequired"})
MAILBOX_CODES = frozenset({"mailboxnotenabledforrestapi", "mailboxnotsupportedforrestapi",
                           "errorinvaliduser"})
# Graph's maximum subscription lifetime for Outlook messages: 10,080 minutes (under 7 days)
MAX_MESSAGE_SUBSCRIPTION = timedelta(minutes=10_080)
CHANGE_TYPES = "created,updated,deleted"


def graph_time(value: datetime) -> str:
    """UTC ISO-8601 with a `Z`, as Graph writes expirationDateTime."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _codes(response: httpx.Response) -> set[str]:
    return {code.lower() for code in error_info(response).codes}


def _complete(resource: dict[str, Any]) -> bool:
    """Holds what graph_message_to_mail needs for a faithful MailMessage."""
    return ("conversationId" in resource
            and (resource.get("from") or resource.get("sender")) is not None
            and (resource.get("sentDateTime") or resource.get("receivedDateTime")) is not None)


class GraphClient:
    def __init__(self, access_token: Callable[[], str], base_url: str = DEFAULT_GRAPH_API_URL,
                 *, folder: str = "inbox", page_size: int = 50, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait: float = 60.0, backoff: float = 1.0,
                 verify: SSLContext | bool = True,
                 refresh: Callable[[], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not base_url.startswith("https://"):
            raise ValueError(f"graph: base URL must be https: {base_url!r}")
        self._http = ProviderHttp("graph", base_url, access_token, timeout=timeout,
                                  max_retries=max_retries, max_retry_wait=max_retry_wait,
                                  backoff=backoff, verify=verify, refresh=refresh,
                                  transport=transport)
        self.folder = folder
        self.page_size = page_size
        self._prefer = [("Prefer", f"odata.maxpagesize={page_size}"),
                        ("Prefer", 'IdType="ImmutableId"'),
                        ("Prefer", 'outlook.body-content-type="text"')]

    def close(self) -> None:
        self._http.close()

    def _user(self, mailbox: str, *path: str) -> str:
        parts = [quote(mailbox, safe="@"), *(quote(p, safe="=") for p in path)]
        return self._http.url("users/" + "/".join(parts))

    def _get(self, url: str, params: dict[str, str | int] | None = None) -> httpx.Response:
        return self._http.get(url, params, self._prefer)

    def _check_mailbox(self, mailbox: str, response: httpx.Response, what: str) -> None:
        """Raise MailboxGone when `response` says, or the inbox folder confirms, the mailbox
        is not there."""
        if _codes(response) & MAILBOX_CODES:
            raise MailboxGone("graph", self._http.failure(response, what).reason,
                              response.status_code)
        if response.status_code != 404:
            return
        probe = self._get(self._user(mailbox, "mailFolders", "inbox"), {"$select": "id"})
        if probe.status_code == 404 or _codes(probe) & MAILBOX_CODES:
            raise MailboxGone("graph", self._http.failure(probe, "inbox folder").reason,
                              probe.status_code)

    def changes_since(self, mailbox_address: str, cursor: str | None, *,
                      folder: str | None = None) -> ChangePage:
        """`folder` (an id or a well-known name) instead of the client's, for a new round."""
        if cursor is None:
            response = self._get(self._user(mailbox_address, "mailFolders",
                                            folder or self.folder, "messages", "delta"),
                                 {"$select": SELECT})
        elif not self._http.owns(cursor):
            raise ValueError("not a Graph cursor of this client's base URL")
        else:
            response = self._get(cursor)
        if response.status_code == 410 or _codes(response) & CURSOR_CODES:
            raise CursorExpired("graph", self._http.failure(response, "messages delta").reason,
                                response.status_code)
        if not response.is_success:
            self._check_mailbox(mailbox_address, response, "messages delta")
            raise self._http.failure(response, "messages delta")
        try:
            page = parse_graph_delta(response.content)
        except MalformedWebhook as exc:
            raise self._http.error(f"messages delta: unreadable response: {exc}") from None
        link = page.next_link or page.delta_link or ""
        if not self._http.owns(link):
            raise self._http.error("messages delta: link outside the configured API base URL")
        messages: list[MailMessage] = []
        skipped: list[SkippedMessage] = []
        deleted = [i for i in page.removed_ids if page.removed_reasons[i] == "deleted"]
        for item in page.items:
            try:
                message = (self._mail(mailbox_address, item.resource) if _complete(item.resource)
                           else self._message(mailbox_address, item.id, probe=False))
            except MalformedWebhook as exc:
                skipped.append(SkippedMessage(id=item.id, reason=str(exc)))
                continue
            if message is None:  # deleted since the page was made
                deleted.append(item.id)
            else:
                messages.append(message)
        return ChangePage(
            messages=messages, deleted_ids=deleted, skipped=skipped,
            left_scope_ids=[i for i in page.removed_ids if page.removed_reasons[i] != "deleted"],
            new_cursor=link, more=page.next_link is not None)

    def backfill(self, mailbox_address: str, since: datetime,
                 page_token: str | None = None, *, folder: str | None = None) -> BackfillPage:
        if page_token is None:
            when = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            response = self._get(
                self._user(mailbox_address, "mailFolders", folder or self.folder, "messages"),
                {"$filter": f"receivedDateTime ge {when}", "$orderby": "receivedDateTime desc",
                 "$top": self.page_size, "$select": SELECT})
        elif not self._http.owns(page_token):
            raise ValueError("not a Graph page token of this client's base URL")
        else:
            response = self._get(page_token)
        if not response.is_success:
            self._check_mailbox(mailbox_address, response, "messages list")
            raise self._http.failure(response, "messages list")
        listing = self._http.json(response, "messages list")
        values = listing.get("value")
        next_link = listing.get("@odata.nextLink")
        if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
            raise self._http.error("messages list: value is not a list of messages")
        if next_link is not None and not (isinstance(next_link, str)
                                          and self._http.owns(next_link)):
            raise self._http.error("messages list: nextLink outside the configured API base URL")
        messages: list[MailMessage] = []
        skipped: list[SkippedMessage] = []
        for value in values:
            try:
                messages.append(self._mail(mailbox_address, value))
            except MalformedWebhook as exc:
                skipped.append(SkippedMessage(id=str(value.get("id")), reason=str(exc)))
        return BackfillPage(messages=messages, skipped=skipped, next_page_token=next_link)

    def fetch_message(self, mailbox_address: str, message_id: str) -> MailMessage | None:
        """Raises MalformedWebhook when the message cannot become a MailMessage."""
        return self._message(mailbox_address, message_id, probe=True)

    def _message(self, mailbox: str, message_id: str, *, probe: bool) -> MailMessage | None:
        response = self._get(self._user(mailbox, "messages", message_id),
                             {"$select": SELECT + ",internetMessageHeaders"})
        if response.status_code == 404:
            if probe or _codes(response) & MAILBOX_CODES:
                self._check_mailbox(mailbox, response, "message")
            return None
        if not response.is_success:
            self._check_mailbox(mailbox, response, "message")
            raise self._http.failure(response, "message")
        return self._mail(mailbox, json_object(response.content, max_bytes=64 << 20))

    def _mail(self, mailbox: str, resource: dict[str, Any]) -> MailMessage:
        """The resource as a MailMessage, with its attachments when it has any (S8)."""
        message = graph_message_to_mail(resource)
        if resource.get("hasAttachments") is True:
            message = message.model_copy(
                update={"attachments": self.attachments(mailbox, message.id)})
        return message

    def attachments(self, mailbox: str, message_id: str) -> list[Attachment]:
        """`GET /users/{m}/messages/{id}/attachments` with `$select` of the metadata only (a
        file attachment's contentBytes are not selected, so never downloaded); [] when the
        message is gone meanwhile (its deletion comes with the next changes)."""
        out: list[Attachment] = []
        url: str | None = self._user(mailbox, "messages", message_id, "attachments")
        params: dict[str, str | int] | None = {"$select": ATTACHMENT_SELECT}
        while url is not None:
            response = self._get(url, params)
            if response.status_code == 404:
                return out
            if not response.is_success:
                self._check_mailbox(mailbox, response, "attachments")
                raise self._http.failure(response, "attachments")
            try:
                out += graph_attachments(response.content)
                body = json_object(response.content, max_bytes=8 << 20)
            except MalformedWebhook as exc:
                raise self._http.error(f"attachments: unreadable response: {exc}") from None
            link = body.get("@odata.nextLink")
            if link is not None and not (isinstance(link, str) and self._http.owns(link)):
                raise self._http.error("attachments: nextLink outside the configured base URL")
            url, params = link, None
        return out

    # -- folders ----------------------------------------------------------------------------------
    def folders(self, mailbox: str) -> list[tuple[GraphFolder, str]]:
        """Every mail folder (hidden ones left out, as Outlook shows them) with its path of
        display names (`Inbox/Projects`), parents before children."""
        out: list[tuple[GraphFolder, str]] = []
        todo: list[tuple[str, str]] = [("", "")]  # (parent id, parent path); "" = the root
        while todo:
            parent, prefix = todo.pop(0)
            url: str | None = self._user(mailbox, "mailFolders", parent, "childFolders") \
                if parent else self._user(mailbox, "mailFolders")
            params: dict[str, str | int] | None = {
                "$top": 100, "$select": "id,displayName,childFolderCount"}
            while url is not None:
                response = self._get(url, params)
                if not response.is_success:
                    self._check_mailbox(mailbox, response, "mail folders")
                    if response.status_code == 404 and parent:
                        break  # removed while listing: as if it were not there (L4)
                    raise self._http.failure(response, "mail folders")
                try:
                    page, link = graph_folders(response.content)
                except MalformedWebhook as exc:
                    raise self._http.error(f"mail folders: unreadable response: {exc}") \
                        from None
                if link is not None and not self._http.owns(link):
                    raise self._http.error("mail folders: nextLink outside the base URL")
                for folder in page:
                    path = f"{prefix}/{folder.name}" if prefix else folder.name
                    out.append((folder, path))
                    if folder.children:
                        todo.append((folder.id, path))
                url, params = link, None
        return out

    def well_known(self, mailbox: str, names: tuple[str, ...]) -> dict[str, str]:
        """Well-known folder name (`inbox`, `sentitems`, `junkemail`, …) -> its folder id, for
        the names the mailbox has (a 404 leaves the name out)."""
        out: dict[str, str] = {}
        for name in names:
            response = self._get(self._user(mailbox, "mailFolders", name), {"$select": "id"})
            if response.status_code == 404 and name != "inbox":
                continue
            if not response.is_success:
                self._check_mailbox(mailbox, response, "mail folder")
                raise self._http.failure(response, "mail folder")
            ident = self._http.json(response, "mail folder").get("id")
            if not isinstance(ident, str) or not ident:
                raise self._http.error(f"mail folder {name}: the answer has no id")
            out[name] = ident
        return out

    def message_folder(self, mailbox: str, message_id: str) -> str | None:
        """The id of the folder holding the message now; None when it is gone (with immutable
        ids a message moved to another folder keeps its id)."""
        response = self._get(self._user(mailbox, "messages", message_id),
                             {"$select": "id,parentFolderId"})
        if response.status_code == 404:
            if _codes(response) & MAILBOX_CODES:
                self._check_mailbox(mailbox, response, "message")
            return None
        if not response.is_success:
            self._check_mailbox(mailbox, response, "message")
            raise self._http.failure(response, "message")
        folder = self._http.json(response, "message").get("parentFolderId")
        return folder if isinstance(folder, str) else None

    # -- change notification subscriptions ---------------------------------------------------------
    def subscription_resource(self, mailbox_address: str, folder: str | None = None) -> str:
        """`/users/{mailbox}/messages`, or one folder's: `/users/{mailbox}/mailFolders('{folder}')
        /messages`. By address, so a change notification's resource names the mailbox too."""
        user = quote(mailbox_address, safe="@")
        if folder is None:
            return f"/users/{user}/messages"
        return f"/users/{user}/mailFolders('{quote(folder, safe='')}')/messages"

    def create_subscription(self, mailbox_address: str, *, notification_url: str,
                            lifecycle_url: str, client_state: str, expires_at: datetime,
                            folder: str | None = None) -> PushSubscription:
        """POST /subscriptions. Graph sends a validation request to `notification_url` (and
        `lifecycle_url`) before it answers; a refused handshake is a ProviderError (400)."""
        body = {"changeType": CHANGE_TYPES, "notificationUrl": notification_url,
                "lifecycleNotificationUrl": lifecycle_url,
                "resource": self.subscription_resource(mailbox_address, folder),
                "expirationDateTime": graph_time(expires_at), "clientState": client_state}
        response = self._http.request("POST", self._http.url("subscriptions"), json=body)
        if not response.is_success:
            self._check_mailbox(mailbox_address, response, "subscriptions")
            raise self._http.failure(response, "subscriptions")
        return self._subscription(response, "subscriptions")

    def renew_subscription(self, subscription_id: str, expires_at: datetime
                           ) -> PushSubscription | None:
        """PATCH /subscriptions/{id} with a new expirationDateTime; None when Graph no longer
        has the subscription (404: expired or removed — create a new one)."""
        response = self._http.request(
            "PATCH", self._http.url(f"subscriptions/{quote(subscription_id, safe='')}"),
            json={"expirationDateTime": graph_time(expires_at)})
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise self._http.failure(response, "subscription renewal")
        return self._subscription(response, "subscription renewal")

    def delete_subscription(self, subscription_id: str) -> bool:
        """DELETE /subscriptions/{id}; False when Graph did not have it (already gone)."""
        response = self._http.request(
            "DELETE", self._http.url(f"subscriptions/{quote(subscription_id, safe='')}"))
        if response.status_code == 404:
            return False
        if not response.is_success:
            raise self._http.failure(response, "subscription deletion")
        return True

    def _subscription(self, response: httpx.Response, what: str) -> PushSubscription:
        """The subscription Graph answered (its clientState is read past, never kept)."""
        body = self._http.json(response, what)
        ident, resource = body.get("id"), body.get("resource")
        if not isinstance(ident, str) or not ident:
            raise self._http.error(f"{what}: the answer has no subscription id")
        try:
            expires = timestamp(body.get("expirationDateTime"), "expirationDateTime")
        except MalformedWebhook as exc:
            raise self._http.error(f"{what}: unreadable response: {exc}") from None
        return PushSubscription(id=ident, expires_at=expires,
                                resource=resource if isinstance(resource, str) else "")
