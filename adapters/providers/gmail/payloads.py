"""Gmail API responses: history.list pages and messages.get (`format=full`).

Shapes as in the Gmail v1 discovery document (`ListHistoryResponse`, `History`,
`HistoryMessageAdded/Deleted`, `HistoryLabelAdded/Removed`, `Message`, `MessagePart`,
`MessagePartBody`, `MessagePartHeader`).

- `parse_gmail_history(body)` reads one history.list page.
- `gmail_message_to_mail(resource)` turns a `format=full` message into our `MailMessage`.

Unreadable input raises `MalformedWebhook(field, reason)` (see `adapters.deliveries.webhooks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.deliveries.webhooks import (
    at,
    b64decode,
    json_object,
    message_ids,
    opt_list,
    opt_obj,
    opt_str,
    req_obj,
    req_str,
    uint64,
)
from adapters.errors import MalformedWebhook
from domain.events import Attachment, MailMessage

MAX_RESPONSE_BYTES = 64 << 20
MAX_PART_DEPTH = 32


class LabelChange(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    message_id: str
    added: list[str] = []
    removed: list[str] = []


class HistoryPage(BaseModel):
    """Message ids in first-seen order. A message added and deleted within the page is only in
    `message_ids_deleted` (Gmail never reuses ids), and deleted messages have no label changes.
    `history_id` is the mailbox's current one: store it after the last page."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    message_ids_added: list[str]
    message_ids_deleted: list[str]
    label_changes: list[LabelChange]
    next_page_token: str | None = None
    history_id: int


def _history_message_id(entry: Any, path: str) -> str:
    if not isinstance(entry, dict):
        raise MalformedWebhook(path, "not an object")
    message = req_obj(entry, "message", path)
    return req_str(message, "id", at(path, "message"), max_len=256)


def _label_ids(entry: Mapping[str, Any], path: str) -> list[str]:
    labels = opt_list(entry, "labelIds", path)
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise MalformedWebhook(at(at(path, "labelIds"), index), "not a string")
    return labels


def parse_gmail_history(body: bytes | str | Mapping[str, Any]) -> HistoryPage:
    page = json_object(body, max_bytes=MAX_RESPONSE_BYTES)
    history_id = uint64(page.get("historyId"), "historyId")
    added: dict[str, None] = {}
    deleted: dict[str, None] = {}
    changes: dict[str, dict[str, bool]] = {}  # message → label → added (the later one wins)
    for h_index, record in enumerate(opt_list(page, "history", "")):
        path = at("history", h_index)
        if not isinstance(record, dict):
            raise MalformedWebhook(path, "not an object")
        for key in ("messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"):
            for index, entry in enumerate(opt_list(record, key, path)):
                entry_path = at(at(path, key), index)
                message_id = _history_message_id(entry, entry_path)
                if key == "messagesAdded":
                    added[message_id] = None
                elif key == "messagesDeleted":
                    deleted[message_id] = None
                else:
                    labels = changes.setdefault(message_id, {})
                    for label in _label_ids(entry, entry_path):
                        labels[label] = key == "labelsAdded"
    token = page.get("nextPageToken")
    return HistoryPage(
        message_ids_added=[m for m in added if m not in deleted],
        message_ids_deleted=list(deleted),
        label_changes=[
            LabelChange(message_id=m, added=sorted(k for k, v in labels.items() if v),
                        removed=sorted(k for k, v in labels.items() if not v))
            for m, labels in changes.items() if m not in deleted and labels],
        next_page_token=None if token in (None, "") else req_str(page, "nextPageToken", ""),
        history_id=history_id,
    )


# --- messages.get, format=full ------------------------------------------------------------------


def _headers(part: Mapping[str, Any], path: str) -> dict[str, str]:
    """Header names lower-cased (RFC 5322 names are case-insensitive); the first one wins."""
    headers: dict[str, str] = {}
    for index, header in enumerate(opt_list(part, "headers", path)):
        h_path = at(at(path, "headers"), index)
        if not isinstance(header, dict):
            raise MalformedWebhook(h_path, "not an object")
        headers.setdefault(req_str(header, "name", h_path).lower(),
                           opt_str(header, "value", h_path) or "")
    return headers


def _walk(part: Mapping[str, Any], path: str, depth: int = 0) -> Iterator[tuple[dict[str, Any],
                                                                             str]]:
    if depth > MAX_PART_DEPTH:
        raise MalformedWebhook(path, f"parts nested deeper than {MAX_PART_DEPTH}")
    yield dict(part), path
    for index, child in enumerate(opt_list(part, "parts", path)):
        child_path = at(at(path, "parts"), index)
        if not isinstance(child, dict):
            raise MalformedWebhook(child_path, "not an object")
        yield from _walk(child, child_path, depth + 1)


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words (=?UTF-8?B?…?=) as text; the raw value if they are broken."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def _charset(headers: Mapping[str, str]) -> str:
    message = Message()
    message["content-type"] = headers.get("content-type", "text/plain")
    return message.get_content_charset() or "utf-8"


def _text(part: Mapping[str, Any], headers: Mapping[str, str], path: str) -> str:
    body = opt_obj(part, "body", path) or {}
    if body.get("data") in (None, ""):
        return ""
    raw = b64decode(body["data"], at(at(path, "body"), "data"))
    try:
        return raw.decode(_charset(headers), errors="replace")
    except LookupError:  # an unknown charset name
        return raw.decode("utf-8", errors="replace")


def _addresses(headers: Mapping[str, str], name: str) -> list[str]:
    value = headers.get(name.lower())
    if not value:
        return []
    # entries without an @ ("undisclosed-recipients:;", bare names) are not addresses
    return [address for _, address in getaddresses([_decode_words(value)]) if "@" in address]


def _sent_at(message: Mapping[str, Any], headers: Mapping[str, str]) -> datetime:
    if message.get("internalDate") is not None:
        millis = uint64(message["internalDate"], "internalDate")
        try:
            return datetime.fromtimestamp(millis / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise MalformedWebhook("internalDate", "out of range") from None
    if "date" not in headers:
        raise MalformedWebhook("internalDate", "missing (and no Date header)")
    try:
        parsed = parsedate_to_datetime(headers["date"])
    except (TypeError, ValueError):
        raise MalformedWebhook("payload.headers.Date", "not an RFC 5322 date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def gmail_message_to_mail(resource: bytes | str | Mapping[str, Any]) -> MailMessage:
    """A messages.get `format=full` resource as our MailMessage: id, thread_id = threadId,
    labels = labelIds, read = no UNREAD label, sent_at = internalDate (epoch ms; the Date header
    only when absent), headers case-insensitive, body = the first text/plain part (else the
    first text/html one) decoded from base64url in its charset, parts with a filename as
    attachments (name, size, type)."""
    message = json_object(resource, max_bytes=MAX_RESPONSE_BYTES)
    payload = req_obj(message, "payload", "")
    headers = _headers(payload, "payload")
    from_ = _addresses(headers, "From")
    if not from_:
        raise MalformedWebhook("payload.headers.From", "missing or without an address")
    labels = _label_ids(message, "")
    plain: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part, path in _walk(payload, "payload"):
        mime = (opt_str(part, "mimeType", path) or "").lower()
        part_headers = headers if path == "payload" else _headers(part, path)
        if opt_str(part, "filename", path):
            body = opt_obj(part, "body", path) or {}
            size = body.get("size", 0)
            attachments.append(Attachment(
                name=str(part["filename"]), content_type=mime or "application/octet-stream",
                size=size if isinstance(size, int) and not isinstance(size, bool) else 0))
        elif mime == "text/plain" and plain is None:
            plain = _text(part, part_headers, path)
        elif mime == "text/html" and html is None:
            html = _text(part, part_headers, path)
    in_reply_to = message_ids(headers.get("in-reply-to", ""))
    return MailMessage(
        id=req_str(message, "id", "", max_len=256),
        message_id=next(iter(message_ids(headers.get("message-id", ""))), None),
        thread_id=opt_str(message, "threadId", ""),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=message_ids(headers["references"]) if "references" in headers else None,
        from_=from_[0],
        to=_addresses(headers, "To"),
        cc=_addresses(headers, "Cc"),
        bcc=_addresses(headers, "Bcc"),
        subject=_decode_words(headers.get("subject", "")),
        body=plain if plain is not None else (html or ""),
        sent_at=_sent_at(message, headers),
        labels=labels,
        attachments=attachments,
        read="UNREAD" not in labels,
    )
