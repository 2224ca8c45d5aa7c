"""Mail content in the stored events, sealed with its owner's data key (SPEC L2).

An event that carries content (subject, body, attachment names, refusal reasons) is stored with
its content fields holding the erased placeholders (`domain.events.ERASED`) and, in front, a field
`_sealed`: base64url(owner) "." base64(nonce + AES-GCM ciphertext of the values' JSON list). An
event whose key is destroyed decodes as erased, so state, views and replays show it erased.

Both ways work on the JSON bytes, not on dicts or models: the field is put in front of the
encoded event, and the values are put back in place of their placeholders before the event is
validated once (rebuilding a dict or `model_copy` cost a rebuild a third of its rate).
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import orjson

from adapters.errors import StoreError
from adapters.eventstore.content_keys import ContentKeys
from domain import events as ev
from domain.events import ERASED, DomainEvent

SEALED_KINDS = (ev.MessageSynced, ev.EmailSent, ev.AttachmentRejected, ev.MessageSkipped)
SEALED_KEY = b'"_sealed":"'
ERASED_REASON = "[erased]"
_SKIP_PREFIX = "attachment_not_allowed"
_TENANT_KEY = b'{"tenant":'


def seal_values(doc: dict[str, Any], kind: type[DomainEvent]) -> list[str] | None:
    """Take the content out of an event's JSON (placeholders stay): the values to seal."""
    if kind is ev.MessageSynced or kind is ev.EmailSent:
        msg = doc["message"]
        refused = doc.get("refused") or []  # S8's refused attachments: their names are content
        values = [msg["subject"], msg["body"]]
        msg["subject"], msg["body"] = ERASED, ""
        if msg["attachments"] or refused:
            values += [*(a["name"] for a in msg["attachments"]), *(a["name"] for a in refused),
                       *(a["reason"] for a in refused)]
            for a in [*msg["attachments"], *refused]:
                a["name"] = ERASED
            for a in refused:
                a["reason"] = ERASED_REASON
        return values
    if kind is ev.AttachmentRejected:
        values = [doc["attachment"], doc["reason"]]
        doc["attachment"], doc["reason"] = ERASED, ERASED_REASON
        return values
    if kind is ev.MessageSkipped and doc["reason"].startswith(_SKIP_PREFIX):
        values = [doc["reason"]]  # names the attachments that were not allowed
        doc["reason"] = f"{_SKIP_PREFIX}: {ERASED_REASON}"
        return values
    return None


def with_sealed(body: bytes, owner: str, box: str) -> bytes:
    """The event's JSON with `_sealed` as its first field (the owner in base64url, so the field
    is found without parsing; the box is base64: neither needs escaping)."""
    return b'{"_sealed":"' + _owner_text(owner) + box.encode() + b'",' + body[1:]


def opened(state: bytes, start: int, kind: type[DomainEvent], keys: ContentKeys | None
           ) -> bytes:
    """The JSON of a sealed event stored at `state[start:]` (`_sealed` first), with its values
    put back, or with the placeholders when the owner's key is destroyed."""
    begin = start + len(SEALED_KEY)
    end = state.index(b'"', begin)
    dot = state.index(b".", begin, end)
    body = b"{" + state[end + 2:]
    if keys is None:
        raise StoreError("sealed content but no content keys")
    values = keys.open(_tenant(body), _owner(state[begin:dot]), state[dot + 1:end])
    return body if values is None else _unsealed(body, kind, values)


@functools.lru_cache(maxsize=4096)
def _owner_text(owner: str) -> bytes:
    return base64.urlsafe_b64encode(owner.encode()).rstrip(b"=") + b"."


@functools.lru_cache(maxsize=4096)
def _owner(encoded: bytes) -> str:
    return base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4)).decode()


def _tenant(body: bytes) -> str:
    """The tenant of an event's JSON (its first field, as `DomainEvent` declares it)."""
    end = body.find(b'",', len(_TENANT_KEY))
    if body.startswith(_TENANT_KEY) and end > 0:
        value = body[len(_TENANT_KEY):end + 1]
        if b"\\" not in value:
            return _text(value)
    tenant = orjson.loads(body).get("tenant")  # escapes in the id: parse it properly
    if not isinstance(tenant, str):
        raise StoreError("stored event without a tenant")
    return tenant


@functools.lru_cache(maxsize=4096)
def _text(value: bytes) -> str:
    """A JSON string without escapes (a tenant id: a few per store, so kept)."""
    return str(orjson.loads(value))


def _placeholder(field: str, value: str) -> bytes:
    return b'"' + field.encode() + b'":' + orjson.dumps(value)


# Where each sealed value goes back: the placeholder as stored, and the key it starts with. A key
# pattern with unescaped quotes only ever matches the JSON's own structure, never text inside a
# value.
_SUBJECT, _SUBJECT_KEY = _placeholder("subject", ERASED), b'"subject":'
_BODY, _BODY_KEY = _placeholder("body", ""), b'"body":'
_NAME, _NAME_KEY = _placeholder("name", ERASED), b'"name":'
_REASON, _REASON_KEY = _placeholder("reason", ERASED_REASON), b'"reason":'
_ATTACHMENT, _ATTACHMENT_KEY = _placeholder("attachment", ERASED), b'"attachment":'
_SKIP_REASON = _placeholder("reason", f"{_SKIP_PREFIX}: {ERASED_REASON}")


def _unsealed(state: bytes, kind: type[DomainEvent], values: list[str]) -> bytes:
    """The stored JSON with the content put back in place of the placeholders."""
    dumps = orjson.dumps
    if kind is ev.MessageSynced or kind is ev.EmailSent:
        if len(values) == 2:  # no attachments: one placeholder of each kind
            return state.replace(_SUBJECT, _SUBJECT_KEY + dumps(values[0]), 1).replace(
                _BODY, _BODY_KEY + dumps(values[1]), 1)
        # the names (the message's attachments', then the refused ones') in the order they
        # stand in the JSON, then the refused ones' reasons
        names = state.count(_NAME)
        slots = [(_SUBJECT, _SUBJECT_KEY), (_BODY, _BODY_KEY)] + [(_NAME, _NAME_KEY)] * names \
            + [(_REASON, _REASON_KEY)] * (len(values) - 2 - names)
        return _spliced(state, slots, values)
    if kind is ev.AttachmentRejected:
        return _spliced(state, [(_ATTACHMENT, _ATTACHMENT_KEY), (_REASON, _REASON_KEY)], values)
    return _spliced(state, [(_SKIP_REASON, _REASON_KEY)], values)


def _spliced(state: bytes, slots: list[tuple[bytes, bytes]], values: list[str]) -> bytes:
    """Each value in the next placeholder of its kind, first to last (so only the order within
    one kind matters, and a value equal to its placeholder is not found again), the JSON
    joined once around them."""
    found: list[tuple[int, int, bytes]] = []
    after: dict[bytes, int] = {}
    for (placeholder, key), value in zip(slots, values, strict=True):
        at = state.find(placeholder, after.get(placeholder, 0))
        if at >= 0:
            after[placeholder] = end = at + len(placeholder)
            found.append((at, end, key + orjson.dumps(value)))
    found.sort()
    pieces: list[bytes] = []
    done = 0
    for at, end, text in found:
        pieces += (state[done:at], text)
        done = end
    pieces.append(state[done:])
    return b"".join(pieces)
