"""Microsoft Graph v1.0 contacts of one signed-in user (`/me`): the `ContactsClient` port and its
HTTP client over httpx (issue #5).

- `folders()`: the default Contacts folder (id None, read through `/me/contacts`) and every
  folder of `GET /me/contactFolders` (paged). All of them are the user's own, so `private`
  (see `ContactFolder` for how `shared` would be told apart; public folders have no Graph API).
- `contacts_delta(folder, cursor)`: one page of `GET /me/contactFolders/{id}/contacts/delta`
  (`/me/contacts/delta` for the default folder), then the `@odata.nextLink` / `@odata.deltaLink`
  it returns. The cursor is that link (opaque); None starts a new round, whose pages list the
  whole folder. `@removed` entries → `removed_ids`. 410 Gone or error code `syncStateNotFound` /
  `resyncRequired` → `CursorExpired` (start a new round).
- `get_contact` (`GET /me/contacts/{id}`; None when gone), `create_contact` (`POST
  /me/contacts`, or into a folder), `update_contact` (`PATCH /me/contacts/{id}`; None when the
  contact is gone), `delete_contact` (`DELETE`, idempotent).
- `categories()` (`GET /me/outlook/masterCategories`), `create_category` (`POST`). Graph does
  not let a category's displayName change after it was created (only `color` is writable, see
  "Update outlookCategory"), so a rename is reverted by creating the Base category again.

Throttling (429/503 with Retry-After), token handling and error texts: `adapters.providers.http`
(the token is never logged nor put in an error). The base URL must be https, except on a
loopback host (tests). Links outside the base URL are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ssl import SSLContext
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from adapters.errors import CursorExpired, MalformedWebhook, ProviderError, ProviderThrottled
from adapters.providers.graph.contact_payloads import (
    SELECT,
    ContactDeltaPage,
    ContactFolder,
    ExternalContact,
    MasterCategory,
    contact_body,
    parse_category,
    parse_contact,
    parse_contact_delta,
    parse_folder,
    parse_listing,
)
from adapters.providers.http import ProviderHttp, error_info

DEFAULT_GRAPH_API_URL = "https://graph.microsoft.com/v1.0"
CURSOR_CODES = frozenset({"syncstatenotfound", "resyncrequired"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_LISTING_PAGES = 1000


class ContactsClient(Protocol):
    """Port: one user's external address book (Exchange / Office 365 contacts)."""

    def folders(self) -> list[ContactFolder]: ...

    def contacts_delta(self, folder: str | None, cursor: str | None) -> ContactDeltaPage: ...

    def get_contact(self, contact_id: str) -> ExternalContact | None: ...

    def create_contact(self, fields: Mapping[str, Any], categories: list[str],
                       folder: str | None = None) -> ExternalContact: ...

    def update_contact(self, contact_id: str, fields: Mapping[str, Any],
                       categories: list[str]) -> ExternalContact | None: ...

    def delete_contact(self, contact_id: str) -> None: ...

    def categories(self) -> list[MasterCategory]: ...

    def create_category(self, name: str, color: str | None = None) -> MasterCategory: ...

    def close(self) -> None: ...


def _codes(response: httpx.Response) -> set[str]:
    return {code.lower() for code in error_info(response).codes}


class GraphContactsClient:
    def __init__(self, access_token: Callable[[], str], base_url: str = DEFAULT_GRAPH_API_URL,
                 *, page_size: int = 100, timeout: float = 30.0, max_retries: int = 3,
                 max_retry_wait: float = 60.0, backoff: float = 1.0,
                 verify: SSLContext | bool = True,
                 refresh: Callable[[], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        split = urlsplit(base_url)
        if split.scheme != "https" and not (split.scheme == "http"
                                            and split.hostname in LOOPBACK_HOSTS):
            raise ValueError(f"graph: base URL must be https: {base_url!r}")
        self._http = ProviderHttp("graph", base_url, access_token, timeout=timeout,
                           max_retries=max_retries, max_retry_wait=max_retry_wait,
                           backoff=backoff, verify=verify, refresh=refresh,
                           transport=transport)
        self._prefer = [("Prefer", f"odata.maxpagesize={page_size}"),
                        ("Prefer", 'IdType="ImmutableId"')]

    def close(self) -> None:
        self._http.close()

    def _me(self, *path: str) -> str:
        return self._http.url("me/" + "/".join(quote(p, safe="=") for p in path))

    def _call(self, method: str, url: str, what: str, *, params: Mapping[str, str | int] | None
              = None, body: Any = None) -> httpx.Response:
        return self._http.request(method, url, params, self._prefer, json=body)

    def _ok(self, response: httpx.Response, what: str) -> httpx.Response:
        if not response.is_success:
            raise self._http.failure(response, what)
        return response

    def _read(self, parse: Callable[[bytes], Any], response: httpx.Response, what: str) -> Any:
        try:
            return parse(self._ok(response, what).content)
        except MalformedWebhook as exc:
            raise self._http.error(f"{what}: unreadable response: {exc}") from None

    def _listing(self, url: str, what: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        link: str | None = url
        for _ in range(MAX_LISTING_PAGES):
            if link is None:
                return items
            if not self._http.owns(link):
                raise self._http.error(f"{what}: nextLink outside the configured API base URL")
            values, link = self._read(parse_listing, self._call("GET", link, what), what)
            items.extend(values)
        raise self._http.error(f"{what}: more than {MAX_LISTING_PAGES} pages")

    # -- folders and contacts --------------------------------------------------------------------
    def folders(self) -> list[ContactFolder]:
        what = "contact folders"
        try:
            folders = [parse_folder(item) for item in
                       self._listing(self._me("contactFolders"), what)]
        except MalformedWebhook as exc:
            raise self._http.error(f"{what}: unreadable response: {exc}") from None
        return [ContactFolder(id=None, name="Contacts"), *folders]

    def contacts_delta(self, folder: str | None, cursor: str | None) -> ContactDeltaPage:
        what = "contacts delta"
        if cursor is None:
            url = (self._me("contacts", "delta") if folder is None
                   else self._me("contactFolders", folder, "contacts", "delta"))
            response = self._call("GET", url, what, params={"$select": SELECT})
        elif not self._http.owns(cursor):
            raise ValueError("not a Graph cursor of this client's base URL")
        else:
            response = self._call("GET", cursor, what)
        if response.status_code == 410 or _codes(response) & CURSOR_CODES:
            raise CursorExpired("graph", self._http.failure(response, what).reason,
                                response.status_code)
        page: ContactDeltaPage = self._read(parse_contact_delta, response, what)
        link = page.next_link or page.delta_link or ""
        if not self._http.owns(link):
            raise self._http.error(f"{what}: link outside the configured API base URL")
        return page

    def _contact(self, response: httpx.Response, what: str) -> ExternalContact:
        contact: ExternalContact = self._read(parse_contact, response, what)
        return contact

    def get_contact(self, contact_id: str) -> ExternalContact | None:
        response = self._call("GET", self._me("contacts", contact_id), "contact",
                              params={"$select": SELECT})
        if response.status_code == 404:
            return None
        return self._contact(response, "contact")

    def create_contact(self, fields: Mapping[str, Any], categories: list[str],
                       folder: str | None = None) -> ExternalContact:
        url = (self._me("contacts") if folder is None
               else self._me("contactFolders", folder, "contacts"))
        return self._contact(self._call("POST", url, "create contact",
                                        body=contact_body(fields, categories)), "create contact")

    def update_contact(self, contact_id: str, fields: Mapping[str, Any],
                       categories: list[str]) -> ExternalContact | None:
        response = self._call("PATCH", self._me("contacts", contact_id), "update contact",
                              body=contact_body(fields, categories))
        if response.status_code == 404:
            return None
        return self._contact(response, "update contact")

    def delete_contact(self, contact_id: str) -> None:
        response = self._call("DELETE", self._me("contacts", contact_id), "delete contact")
        if response.status_code != 404:
            self._ok(response, "delete contact")

    # -- categories ------------------------------------------------------------------------------
    def categories(self) -> list[MasterCategory]:
        what = "master categories"
        try:
            return [parse_category(item) for item in
                    self._listing(self._me("outlook", "masterCategories"), what)]
        except MalformedWebhook as exc:
            raise self._http.error(f"{what}: unreadable response: {exc}") from None

    def create_category(self, name: str, color: str | None = None) -> MasterCategory:
        body: dict[str, Any] = {"displayName": name}
        if color is not None:
            body["color"] = color
        what = "create category"
        category: MasterCategory = self._read(
            parse_category, self._call("POST", self._me("outlook", "masterCategories"), what,
                                       body=body), what)
        return category


__all__ = ["ContactsClient", "CursorExpired", "GraphContactsClient", "ProviderError",
           "ProviderThrottled"]
