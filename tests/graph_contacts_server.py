"""A local Microsoft Graph contacts service for tests: one user's address book (`GraphBook`), served
over HTTP by a small FastAPI app (`graph_contacts_app`, run it with `tests/loopback.py`) and read
in memory by `FakeContactsClient` (the hand-written fake of the `ContactsClient` port). Both pass
the same contract tests (`tests/integration/test_graph_contacts_contract.py`).

The HTTP answers follow the documented v1.0 shapes: `contact` (id, parentFolderId, displayName,
givenName, surname, emailAddresses [{name, address}], businessPhones, mobilePhone, companyName,
categories, lastModifiedDateTime, changeKey), `contactFolder` (id, displayName, parentFolderId),
`outlookCategory` (id, displayName, color), collections `{"@odata.context", "value",
"@odata.nextLink"?}`, delta pages ending in `@odata.deltaLink` with `@removed: {"reason":
"deleted"}` entries, errors `{"error": {"code", "message"}}`: 410 `SyncStateNotFound` for an
expired delta token, 429 with `Retry-After` when throttling is switched on, 404
`ErrorItemNotFound`, 400 when a category's displayName is PATCHed (Graph only lets `color`
change).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from adapters.errors import CursorExpired, ProviderError
from adapters.providers.graph.contact_payloads import (
    ContactDeltaPage,
    ContactFolder,
    ExternalContact,
    MasterCategory,
    contact_body,
    parse_contact,
    parse_contact_delta,
)

DEFAULT = "default"  # the default Contacts folder's internal id (`/me/contacts`)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Change:
    version: int
    contact_id: str
    folder: str


@dataclass
class GraphBook:
    """One user's contacts, folders and master categories, with a change log for delta."""

    page_size: int = 3
    folders: dict[str, str] = field(default_factory=dict)  # id -> displayName (not DEFAULT)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> resource
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    version: int = 0
    expired_below: int = 0  # delta tokens older than this answer 410
    throttled: int = 0  # the next N requests answer 429
    retry_after: str = "1"
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- external edits (what a user does in Outlook) -------------------------------------------
    def _tick(self) -> tuple[int, str]:
        self.version += 1
        return self.version, (EPOCH + timedelta(minutes=self.version)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def add_folder(self, name: str) -> str:
        with self.lock:
            folder_id = f"AAMkFolder{next(self._ids)}="
            self.folders[folder_id] = name
            return folder_id

    def put(self, resource: Mapping[str, Any], folder: str = DEFAULT,
            contact_id: str | None = None) -> dict[str, Any]:
        """Create (no id) or replace-merge a contact, as an Outlook edit would."""
        with self.lock:
            if contact_id is None:
                contact_id = f"AAMkContact{next(self._ids)}="
                current: dict[str, Any] = {"id": contact_id, "parentFolderId": folder,
                                           "categories": [], "emailAddresses": [],
                                           "businessPhones": []}
            else:
                current = dict(self.contacts[contact_id])
                folder = current["parentFolderId"]
            version, stamp = self._tick()
            current.update({k: v for k, v in resource.items() if k != "id"})
            current["lastModifiedDateTime"] = stamp
            current["changeKey"] = f"ck{version}"
            self.contacts[contact_id] = current
            self.changes.append(Change(version, contact_id, folder))
            return dict(current)

    def remove(self, contact_id: str) -> bool:
        with self.lock:
            current = self.contacts.pop(contact_id, None)
            if current is None:
                return False
            version, _ = self._tick()
            self.changes.append(Change(version, contact_id, current["parentFolderId"]))
            return True

    def add_category(self, name: str, color: str = "preset0") -> dict[str, Any]:
        with self.lock:
            if any(c["displayName"] == name for c in self.categories.values()):
                raise ValueError("exists")
            category = {"id": f"cat-{next(self._ids)}", "displayName": name, "color": color}
            self.categories[category["id"]] = category
            return dict(category)

    def rename_category(self, category_id: str, name: str) -> None:
        """An Outlook rename: same id, new name (Graph itself cannot do this)."""
        with self.lock:
            self.categories[category_id]["displayName"] = name

    def expire_tokens(self) -> None:
        with self.lock:
            self.expired_below = self.version + 1

    # -- what the API answers --------------------------------------------------------------------
    def delta(self, folder: str, token: int | None, skip: int = 0,
              upto: int | None = None) -> tuple[list[dict[str, Any]], int | None, int]:
        """(entries, next skip or None when the round is complete, the round's upper version).
        Raises LookupError for an expired token."""
        with self.lock:
            if token is not None and token < self.expired_below:
                raise LookupError("expired")
            upto = self.version if upto is None else upto
            if token is None:
                ids = [i for i, c in self.contacts.items() if c["parentFolderId"] == folder]
            else:
                ids = list(dict.fromkeys(c.contact_id for c in self.changes
                                         if c.folder == folder and token < c.version <= upto))
            entries: list[dict[str, Any]] = []
            for contact_id in ids:
                resource = self.contacts.get(contact_id)
                if resource is None or resource["parentFolderId"] != folder:
                    entries.append({"id": contact_id, "@removed": {"reason": "deleted"}})
                else:
                    entries.append(dict(resource))
            page = entries[skip:skip + self.page_size]
            more = skip + self.page_size < len(entries)
            return page, (skip + self.page_size if more else None), upto

    def check_throttle(self) -> bool:
        with self.lock:
            if self.throttled > 0:
                self.throttled -= 1
                return True
            return False


# --- the HTTP app -----


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def graph_contacts_app(book: GraphBook, token: str = "graph-test-token") -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        auth = request.headers.get("authorization", "")
        book.requests.append((request.method, request.url.path, auth))
        if auth != f"Bearer {token}":
            return _error(401, "InvalidAuthenticationToken", "Access token is empty.")
        if book.check_throttle():
            return _error(429, "TooManyRequests", "Too many requests",
                          {"Retry-After": book.retry_after})
        return await call_next(request)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/v1.0"

    def delta_page(request: Request, folder: str, path: str) -> JSONResponse:
        query = request.query_params
        token = query.get("$deltatoken")
        skip = query.get("$skiptoken")
        if skip is not None:  # "<since|->.<skip>.<upto>"
            since_text, skip_text, upto_text = skip.split(".")
            since = None if since_text == "-" else int(since_text)
            args = (since, int(skip_text), int(upto_text))
        else:
            args = (None if token is None else int(token), 0, None)
        try:
            entries, next_skip, upto = book.delta(folder, *args)
        except LookupError:
            return _error(410, "SyncStateNotFound", "The sync state generation is invalid.")
        body: dict[str, Any] = {"@odata.context": f"{base(request)}/$metadata#Collection(contact)",
                                "value": entries}
        link = f"{base(request)}{path}"
        if next_skip is not None:
            since_text = "-" if args[0] is None else str(args[0])
            body["@odata.nextLink"] = f"{link}?$skiptoken={since_text}.{next_skip}.{upto}"
        else:
            body["@odata.deltaLink"] = f"{link}?$deltatoken={upto}"
        return JSONResponse(body)

    @app.get("/v1.0/me/contacts/delta")
    def default_delta(request: Request) -> JSONResponse:
        return delta_page(request, DEFAULT, "/me/contacts/delta")

    @app.get("/v1.0/me/contactFolders/{folder}/contacts/delta")
    def folder_delta(folder: str, request: Request) -> JSONResponse:
        if folder not in book.folders:
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        return delta_page(request, folder, f"/me/contactFolders/{folder}/contacts/delta")

    @app.get("/v1.0/me/contactFolders")
    def folders(request: Request) -> JSONResponse:
        items = [{"id": i, "displayName": n, "parentFolderId": DEFAULT}
                 for i, n in sorted(book.folders.items())]
        skip = int(request.query_params.get("$skip", "0"))
        page = items[skip:skip + book.page_size]
        body: dict[str, Any] = {"value": page}
        if skip + book.page_size < len(items):
            following = skip + book.page_size
            body["@odata.nextLink"] = f"{base(request)}/me/contactFolders?$skip={following}"
        return JSONResponse(body)

    async def create(request: Request, folder: str) -> JSONResponse:
        payload = await request.json()
        return JSONResponse(book.put(payload, folder), status_code=201)

    @app.post("/v1.0/me/contacts")
    async def create_default(request: Request) -> JSONResponse:
        return await create(request, DEFAULT)

    @app.post("/v1.0/me/contactFolders/{folder}/contacts")
    async def create_in(folder: str, request: Request) -> JSONResponse:
        if folder not in book.folders:
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        return await create(request, folder)

    @app.get("/v1.0/me/contacts/{contact_id}")
    def get_contact(contact_id: str) -> JSONResponse:
        if contact_id not in book.contacts:
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        return JSONResponse(book.contacts[contact_id])

    @app.patch("/v1.0/me/contacts/{contact_id}")
    async def update(contact_id: str, request: Request) -> JSONResponse:
        if contact_id not in book.contacts:
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        return JSONResponse(book.put(await request.json(), contact_id=contact_id))

    @app.delete("/v1.0/me/contacts/{contact_id}")
    def delete(contact_id: str) -> Response:
        if not book.remove(contact_id):
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        return Response(status_code=204)

    @app.get("/v1.0/me/outlook/masterCategories")
    def categories() -> JSONResponse:
        return JSONResponse({"value": list(book.categories.values())})

    @app.post("/v1.0/me/outlook/masterCategories")
    async def create_category(request: Request) -> JSONResponse:
        payload = await request.json()
        try:
            category = book.add_category(payload["displayName"], payload.get("color", "preset0"))
        except ValueError:
            return _error(409, "ErrorItemAlreadyExists", "The category already exists.")
        return JSONResponse(category, status_code=201)

    @app.patch("/v1.0/me/outlook/masterCategories/{category_id}")
    async def update_category(category_id: str, request: Request) -> JSONResponse:
        payload = await request.json()
        if category_id not in book.categories:
            return _error(404, "ErrorItemNotFound", "The specified object was not found.")
        if "displayName" in payload:
            return _error(400, "ErrorInvalidRequest", "displayName cannot be changed.")
        book.categories[category_id].update(payload)
        return JSONResponse(book.categories[category_id])

    return app


# --- the fake client -----


class FakeContactsClient:
    """The `ContactsClient` port over a GraphBook in memory (no HTTP). Cursors are opaque
    strings of its own; the parsing is the real client's (`parse_contact_delta`)."""

    def __init__(self, book: GraphBook) -> None:
        self.book = book
        self.closed = False

    def folders(self) -> list[ContactFolder]:
        return [ContactFolder(id=None, name="Contacts"),
                *(ContactFolder(id=i, name=n) for i, n in sorted(self.book.folders.items()))]

    def contacts_delta(self, folder: str | None, cursor: str | None) -> ContactDeltaPage:
        key = folder or DEFAULT
        args: tuple[int | None, int, int | None] = (None, 0, None)
        if cursor is not None:
            kind, cursor_folder, first, second, third = cursor.split("|")
            if cursor_folder != key:
                raise ValueError("a cursor of another folder")
            args = ((int(first), 0, None) if kind == "delta" else
                    (None if first == "-" else int(first), int(second), int(third)))
        try:
            entries, next_skip, upto_version = self.book.delta(key, *args)
        except LookupError:
            raise CursorExpired("graph", "contacts delta: 410 SyncStateNotFound", 410) from None
        since_text = "-" if args[0] is None else str(args[0])
        page: dict[str, Any] = {"value": entries}
        if next_skip is not None:
            page["@odata.nextLink"] = f"next|{key}|{since_text}|{next_skip}|{upto_version}"
        else:
            page["@odata.deltaLink"] = f"delta|{key}|{upto_version}|0|-"
        return parse_contact_delta(page)

    def get_contact(self, contact_id: str) -> ExternalContact | None:
        resource = self.book.contacts.get(contact_id)
        return None if resource is None else parse_contact(resource)

    def create_contact(self, fields: Mapping[str, Any], categories: list[str],
                       folder: str | None = None) -> ExternalContact:
        key = folder or DEFAULT
        if key != DEFAULT and key not in self.book.folders:
            raise ProviderError("graph", "create contact: 404 ErrorItemNotFound", 404)
        return parse_contact(self.book.put(contact_body(fields, categories), key))

    def update_contact(self, contact_id: str, fields: Mapping[str, Any],
                       categories: list[str]) -> ExternalContact | None:
        if contact_id not in self.book.contacts:
            return None
        return parse_contact(self.book.put(contact_body(fields, categories),
                                           contact_id=contact_id))

    def delete_contact(self, contact_id: str) -> None:
        self.book.remove(contact_id)

    def categories(self) -> list[MasterCategory]:
        return [MasterCategory(id=c["id"], name=c["displayName"], color=c.get("color"))
                for c in self.book.categories.values()]

    def create_category(self, name: str, color: str | None = None) -> MasterCategory:
        try:
            category = self.book.add_category(name, color or "preset0")
        except ValueError:
            raise ProviderError("graph", "create category: 409 ErrorItemAlreadyExists",
                                409) from None
        return MasterCategory(id=category["id"], name=category["displayName"],
                              color=category["color"])

    def close(self) -> None:
        self.closed = True
