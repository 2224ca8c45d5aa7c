"""Microsoft Graph mail responses: delta pages and the message resource.

- `parse_graph_delta(body)` reads one page of `GET …/messages/delta`: changed messages, removed
  ones (`@removed`), and either `@odata.nextLink` (more pages) or `@odata.deltaLink` (done; keep
  it for the next round).
- `graph_message_to_mail(resource)` turns a message resource into the `MailMessage` that a
  SyncMessage command carries.
- `graph_attachments(body)` reads `GET …/messages/{id}/attachments?$select=name,size,
  contentType` (never the content bytes) as the message's attachments, for S8.
- `graph_folders(body)` reads one page of `GET …/mailFolders` (id, displayName,
  childFolderCount).

Unreadable input raises `MalformedWebhook(field, reason)` (see `adapters.deliveries.webhooks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.deliveries.webhooks import (
    at,
    boolean,
    json_object,
    message_ids,
    opt_list,
    opt_obj,
    opt_str,
    req_obj,
    req_str,
    timestamp,
)
from adapters.errors import MalformedWebhook
from domain.events import Attachment, MailMessage

MAX_PAGE_BYTES = 64 << 20  # a delta page of full message resources (bodies included)


class DeltaItem(BaseModel):
    """A message that is new or changed since the last round. `resource` is the item as Graph
    sent it: complete unless the query used `$select` (then fetch the message, or pass it to
    `graph_message_to_mail` only when it holds the fields that needs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    etag: str | None = None
    is_read: bool | None = None
    resource: dict[str, Any]


class DeltaPage(BaseModel):
    """Exactly one of `next_link` (fetch it next) and `delta_link` (the round is complete)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    items: list[DeltaItem]
    removed_ids: list[str]
    removed_reasons: dict[str, str]  # id → Graph's reason: "deleted" or "changed" (moved out)
    next_link: str | None = None
    delta_link: str | None = None


def _is_message_type(odata_type: str | None) -> bool:
    """`#microsoft.graph.message` in any letter case, and its subtypes (eventMessage, …)."""
    if odata_type is None:
        return True
    lowered = odata_type.lower()
    return lowered.startswith("#microsoft.graph.") and "message" in lowered


def parse_graph_delta(body: bytes | str | Mapping[str, Any]) -> DeltaPage:
    page = json_object(body, max_bytes=MAX_PAGE_BYTES)
    next_link = opt_str(page, "@odata.nextLink", "")
    delta_link = opt_str(page, "@odata.deltaLink", "")
    if next_link is None and delta_link is None:
        raise MalformedWebhook("@odata.deltaLink", "neither @odata.nextLink nor deltaLink")
    if next_link is not None and delta_link is not None:
        raise MalformedWebhook("@odata.deltaLink", "both @odata.nextLink and deltaLink")
    for key, link in (("@odata.nextLink", next_link), ("@odata.deltaLink", delta_link)):
        if link is not None and not link.startswith("https://"):
            raise MalformedWebhook(key, "not an https URL")
    values = page.get("value")
    if not isinstance(values, list):
        raise MalformedWebhook("value", "missing" if values is None else "not a list")
    items: dict[str, DeltaItem] = {}
    removed: dict[str, str] = {}
    for index, item in enumerate(values):
        path = at("value", index)
        if not isinstance(item, dict):
            raise MalformedWebhook(path, "not an object")
        odata_type = opt_str(item, "@odata.type", path)
        if not _is_message_type(odata_type):
            raise MalformedWebhook(at(path, "@odata.type"), f"not a message: {odata_type!r}")
        message_id = req_str(item, "id", path, max_len=2048)
        gone = opt_obj(item, "@removed", path)
        if gone is not None:
            # A later entry for the same id wins: Graph lists an id once per page anyway.
            removed[message_id] = opt_str(gone, "reason", at(path, "@removed")) or "deleted"
            items.pop(message_id, None)
            continue
        read = item.get("isRead")
        items[message_id] = DeltaItem(
            id=message_id, etag=opt_str(item, "@odata.etag", path),
            is_read=None if read is None else boolean(read, at(path, "isRead")), resource=item)
        removed.pop(message_id, None)
    return DeltaPage(items=list(items.values()), removed_ids=list(removed),
                     removed_reasons=removed, next_link=next_link, delta_link=delta_link)


def _address(recipient: Any, path: str) -> str:
    if not isinstance(recipient, dict):
        raise MalformedWebhook(path, "not a recipient object")
    email = req_obj(recipient, "emailAddress", path)
    return req_str(email, "address", at(path, "emailAddress"), max_len=320)


def _recipients(resource: Mapping[str, Any], key: str) -> list[str]:
    return [_address(r, at(key, i)) for i, r in enumerate(opt_list(resource, key, ""))]


def _internet_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    """internetMessageHeaders (only when the request `$select`ed them), names lower-cased."""
    headers: dict[str, str] = {}
    for index, header in enumerate(opt_list(resource, "internetMessageHeaders", "")):
        path = at("internetMessageHeaders", index)
        if not isinstance(header, dict):
            raise MalformedWebhook(path, "not an object")
        headers.setdefault(req_str(header, "name", path).lower(),
                           opt_str(header, "value", path) or "")
    return headers


def graph_message_to_mail(resource: bytes | str | Mapping[str, Any]) -> MailMessage:
    """A Graph `message` resource as our MailMessage: id = Graph id, message_id =
    internetMessageId, thread_id = conversationId, labels = categories, read = isRead,
    sent_at = sentDateTime (receivedDateTime when absent), body = body.content as delivered
    (HTML stays HTML; ask Graph for text with `Prefer: outlook.body-content-type="text"`)."""
    message = json_object(resource, max_bytes=MAX_PAGE_BYTES)
    sender = opt_obj(message, "from", "") or opt_obj(message, "sender", "")
    if sender is None:
        raise MalformedWebhook("from", "missing (and no sender)")
    sender_key = "from" if message.get("from") is not None else "sender"
    sent_raw = message.get("sentDateTime")
    sent_key = "sentDateTime" if sent_raw is not None else "receivedDateTime"
    if message.get(sent_key) is None:
        raise MalformedWebhook("sentDateTime", "missing (and no receivedDateTime)")
    body = opt_obj(message, "body", "")
    categories = opt_list(message, "categories", "")
    for index, category in enumerate(categories):
        if not isinstance(category, str):
            raise MalformedWebhook(at("categories", index), "not a string")
    headers = _internet_headers(message)
    in_reply_to = next(iter(message_ids(headers.get("in-reply-to", ""))), None)
    references = message_ids(headers["references"]) if "references" in headers else None
    read = message.get("isRead")
    return MailMessage(
        id=req_str(message, "id", "", max_len=2048),
        message_id=opt_str(message, "internetMessageId", ""),
        thread_id=opt_str(message, "conversationId", ""),
        in_reply_to=in_reply_to,
        references=references,
        from_=_address(sender, sender_key),
        to=_recipients(message, "toRecipients"),
        cc=_recipients(message, "ccRecipients"),
        bcc=_recipients(message, "bccRecipients"),
        subject=opt_str(message, "subject", "") or "",
        body=(opt_str(body, "content", "body") or "") if body is not None else "",
        sent_at=timestamp(message.get(sent_key), sent_key),
        labels=list(categories),
        read=False if read is None else boolean(read, "isRead"),
    )


MAX_LISTING_BYTES = 8 << 20  # attachment and folder listings carry no content


def graph_attachments(body: bytes | str | Mapping[str, Any]) -> list[Attachment]:
    """Name, size and content type of each attachment (file, item or reference attachment).
    A missing name is `""` (S8 refuses it as a type without extension, never drops it); a
    missing content type is `application/octet-stream`."""
    listing = json_object(body, max_bytes=MAX_LISTING_BYTES)
    out: list[Attachment] = []
    for index, item in enumerate(opt_list(listing, "value", "")):
        path = at("value", index)
        if not isinstance(item, dict):
            raise MalformedWebhook(path, "not an object")
        size = item.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedWebhook(at(path, "size"), "not a size in bytes")
        out.append(Attachment(name=opt_str(item, "name", path) or "", size=size,
                              content_type=opt_str(item, "contentType", path)
                              or "application/octet-stream"))
    return out


class GraphFolder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    name: str  # displayName
    children: int = 0  # childFolderCount


def graph_folders(body: bytes | str | Mapping[str, Any]) -> tuple[list[GraphFolder], str | None]:
    """One page of a mailFolders / childFolders listing and its `@odata.nextLink`."""
    listing = json_object(body, max_bytes=MAX_LISTING_BYTES)
    folders: list[GraphFolder] = []
    for index, item in enumerate(opt_list(listing, "value", "")):
        path = at("value", index)
        if not isinstance(item, dict):
            raise MalformedWebhook(path, "not an object")
        children = item.get("childFolderCount", 0)
        if not isinstance(children, int) or isinstance(children, bool):
            raise MalformedWebhook(at(path, "childFolderCount"), "not a number")
        folders.append(GraphFolder(id=req_str(item, "id", path, max_len=2048),
                                   name=opt_str(item, "displayName", path) or "",
                                   children=children))
    return folders, opt_str(listing, "@odata.nextLink", "")
