"""Microsoft Graph contacts payloads: the contact resource, contactFolder, outlookCategory and
contact delta pages, and the mapping between a Graph contact and the `fields` of the contact-sync
commands (SyncExternalContact, ExternalContactChangeQueued).

Field mapping (Graph → `fields`; keys absent or empty on Graph are left out):

| Graph | fields |
| --- | --- |
| displayName (else givenName + surname) | name |
| givenName / surname | given_name / surname |
| emailAddresses[].address | emails (list, in Graph's order) |
| businessPhones | business_phones (list) |
| mobilePhone | mobile_phone |
| companyName | company |

The other way, `phone` (the CRM's one phone number, UpdateContact) is written as the first
business phone when `business_phones` is not given. Other keys (e.g. the C8 custom fields
`<field> (previous)`, `customer_status`) have no Graph contact property and are not written.

Unreadable input raises `MalformedWebhook(field, reason)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from adapters.deliveries.webhooks import (
    at,
    json_object,
    opt_list,
    opt_obj,
    opt_str,
    req_str,
    timestamp,
)
from adapters.errors import MalformedWebhook

MAX_PAGE_BYTES = 64 << 20
MAX_ID_CHARS = 2048
# The Graph contact properties the sync reads ($select of every contact request).
SELECT = ("id,parentFolderId,displayName,givenName,surname,emailAddresses,businessPhones,"
          "mobilePhone,companyName,categories,lastModifiedDateTime,changeKey")


class ExternalContact(BaseModel):
    """A Graph contact as the sync sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    folder_id: str | None = None  # parentFolderId
    fields: dict[str, Any]
    categories: list[str]
    modified_at: datetime
    change_key: str | None = None

    def fingerprint(self) -> str:
        """What the contact holds (fields and categories, not ids or times): equal fingerprints
        mean equal content, whoever wrote it (echo suppression, C4)."""
        return content_fingerprint(self.fields, self.categories)


def content_fingerprint(fields: Mapping[str, Any], categories: list[str]) -> str:
    raw = orjson.dumps({"fields": dict(fields), "categories": sorted(set(categories))},
                       option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


class ContactFolder(BaseModel):
    """A contact folder. `kind`: `private` for the signed-in user's own folders (every folder
    under `/me/contactFolders`, and the default Contacts folder, `id` None); `shared` for a
    folder of another mailbox the user was given access to (delegation; Graph reaches it as
    `/users/{owner}/contactFolders/{id}`, `owner` set). Public folders have no Graph v1.0
    contacts API, so no folder is ever `public` here."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str | None
    name: str
    kind: str = "private"
    owner: str | None = None


class MasterCategory(BaseModel):
    """An outlookCategory of the user's master category list."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    name: str  # displayName
    color: str | None = None


class ContactDeltaPage(BaseModel):
    """One page of a contacts delta round: exactly one of `next_link` and `delta_link`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    contacts: list[ExternalContact]
    removed_ids: list[str]
    next_link: str | None = None
    delta_link: str | None = None


def _strings(resource: Mapping[str, Any], key: str) -> list[str]:
    values = opt_list(resource, key, "")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise MalformedWebhook(at(key, index), "not a string")
    return [v for v in values if v]


def graph_contact_fields(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The `fields` of a Graph contact resource (see the module's table)."""
    fields: dict[str, Any] = {}
    given = opt_str(resource, "givenName", "")
    surname = opt_str(resource, "surname", "")
    name = opt_str(resource, "displayName", "") or " ".join(p for p in (given, surname) if p)
    if name:
        fields["name"] = name
    if given:
        fields["given_name"] = given
    if surname:
        fields["surname"] = surname
    emails: list[str] = []
    for index, entry in enumerate(opt_list(resource, "emailAddresses", "")):
        path = at("emailAddresses", index)
        if not isinstance(entry, dict):
            raise MalformedWebhook(path, "not an object")
        address = opt_str(entry, "address", path)
        if address:
            emails.append(address)
    if emails:
        fields["emails"] = emails
    phones = _strings(resource, "businessPhones")
    if phones:
        fields["business_phones"] = phones
    for key, graph_key in (("mobile_phone", "mobilePhone"), ("company", "companyName")):
        value = opt_str(resource, graph_key, "")
        if value:
            fields[key] = value
    return fields


def parse_contact(resource: bytes | str | Mapping[str, Any]) -> ExternalContact:
    """A Graph `contact` resource (a delta item, or the answer to GET/POST/PATCH)."""
    contact = json_object(resource, max_bytes=MAX_PAGE_BYTES)
    modified = contact.get("lastModifiedDateTime")
    return ExternalContact(
        id=req_str(contact, "id", "", max_len=MAX_ID_CHARS),
        folder_id=opt_str(contact, "parentFolderId", ""),
        fields=graph_contact_fields(contact),
        categories=_strings(contact, "categories"),
        modified_at=timestamp(modified, "lastModifiedDateTime"),
        change_key=opt_str(contact, "changeKey", ""))


def contact_body(fields: Mapping[str, Any], categories: list[str]) -> dict[str, Any]:
    """The JSON body of POST/PATCH /me/contacts for `fields` and `categories`. Keys the fields
    do not name are left out, so a PATCH keeps what the external side has there."""
    body: dict[str, Any] = {"categories": list(categories)}
    text_keys = (("name", "displayName"), ("given_name", "givenName"), ("surname", "surname"),
                 ("mobile_phone", "mobilePhone"), ("company", "companyName"))
    for key, graph_key in text_keys:
        value = fields.get(key)
        if isinstance(value, str):
            body[graph_key] = value
    emails = fields.get("emails")
    if isinstance(emails, list):
        body["emailAddresses"] = [{"address": e, "name": e} for e in emails
                                  if isinstance(e, str) and e]
    phones = fields.get("business_phones")
    phone = fields.get("phone")
    if isinstance(phones, list):
        body["businessPhones"] = [p for p in phones if isinstance(p, str) and p]
    elif isinstance(phone, str) and phone:
        body["businessPhones"] = [phone]
    return body


def _links(page: Mapping[str, Any]) -> tuple[str | None, str | None]:
    next_link = opt_str(page, "@odata.nextLink", "")
    delta_link = opt_str(page, "@odata.deltaLink", "")
    if (next_link is None) == (delta_link is None):
        raise MalformedWebhook("@odata.deltaLink", "need exactly one of @odata.nextLink and "
                               "@odata.deltaLink")
    return next_link, delta_link


def _values(page: Mapping[str, Any]) -> list[Any]:
    values = page.get("value")
    if not isinstance(values, list):
        raise MalformedWebhook("value", "missing" if values is None else "not a list")
    return values


def parse_contact_delta(body: bytes | str | Mapping[str, Any]) -> ContactDeltaPage:
    """One page of `GET …/contacts/delta`. A later entry for the same id wins."""
    page = json_object(body, max_bytes=MAX_PAGE_BYTES)
    next_link, delta_link = _links(page)
    contacts: dict[str, ExternalContact] = {}
    removed: dict[str, None] = {}
    for index, item in enumerate(_values(page)):
        path = at("value", index)
        if not isinstance(item, dict):
            raise MalformedWebhook(path, "not an object")
        contact_id = req_str(item, "id", path, max_len=MAX_ID_CHARS)
        if opt_obj(item, "@removed", path) is not None:
            removed[contact_id] = None
            contacts.pop(contact_id, None)
            continue
        try:
            contacts[contact_id] = parse_contact(item)
        except MalformedWebhook as exc:
            raise MalformedWebhook(at(path, exc.field), exc.reason) from None
        removed.pop(contact_id, None)
    return ContactDeltaPage(contacts=list(contacts.values()), removed_ids=list(removed),
                            next_link=next_link, delta_link=delta_link)


def parse_listing(body: bytes | str | Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A collection page (`value` objects, optional `@odata.nextLink`)."""
    page = json_object(body, max_bytes=MAX_PAGE_BYTES)
    values = _values(page)
    for index, item in enumerate(values):
        if not isinstance(item, dict):
            raise MalformedWebhook(at("value", index), "not an object")
    return values, opt_str(page, "@odata.nextLink", "")


def parse_folder(resource: Mapping[str, Any], path: str = "") -> ContactFolder:
    return ContactFolder(id=req_str(resource, "id", path, max_len=MAX_ID_CHARS),
                         name=opt_str(resource, "displayName", path) or "")


def parse_category(resource: bytes | str | Mapping[str, Any], path: str = "") -> MasterCategory:
    category = json_object(resource, max_bytes=MAX_PAGE_BYTES)
    return MasterCategory(id=req_str(category, "id", path, max_len=MAX_ID_CHARS),
                          name=req_str(category, "displayName", path),
                          color=opt_str(category, "color", path))
