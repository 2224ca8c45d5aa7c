"""A stored MessageSynced decoded straight into what the fold reads (issue #15), without the
event model: a tenant's stream is mostly these, and validating each into pydantic models cost
the command side's first load most of its time.

Only the canonical form is taken this way: the bytes must be exactly orjson's encoding of the
object they decode to (so no duplicate keys, no other spelling), with exactly the event's and the
message's fields, every field of the type the model declares (no coercion), no attachments and
no refused ones, times in the `YYYY-MM-DDThh:mm:ss[.ffffff]±hh:mm` form the encoder writes.
That is every event `PydanticMapper.encode` stores. Anything else answers None and is decoded
through the model as before, which accepts or rejects it: so this path accepts a subset of what
the model accepts and folds it alike (tests/unit/test_synced_decode.py compares them).

Most events are read by one regular expression over the stored text (`_PLAIN`): the mapper's
layout, field by field in the model's order, every text without an escape (checking types in
Python after parsing cost as much as pydantic's validation). One that has escapes or odd texts
is parsed (`orjson`) and checked field by field instead.

With `content=False` (the command side's state keeps no message content) both readers leave
participants, subject and time out: the sealed subject is not opened, so a seal that does not
open is not noticed here (the projections decode through the model, which refuses it); every
other field is checked as above.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson

from adapters.eventstore.content_keys import ContentKeys
from adapters.eventstore.seal import SEALED_KEY, _owner
from domain.events import ERASED
from domain.state import SyncedMessage
from domain.tenant import addresses

_EVENT = frozenset({"tenant", "actor", "occurred_at", "correlation_id", "command_id", "mailbox",
                    "thread", "message", "crm_initiated", "refused"})
_MESSAGE = frozenset({"id", "message_id", "thread_id", "in_reply_to", "references", "from", "to",
                      "cc", "bcc", "subject", "body", "sent_at", "labels", "attachments",
                      "delivery_status", "read"})


# a JSON text with nothing escaped (so its characters are the text), or null, or a list of such
_S = r'"([^"\\\x00-\x1f]*)"'
_N = r'(null|"[^"\\\x00-\x1f]*")'
_L = r'\[((?:"[^"\\\x00-\x1f]*"(?:,"[^"\\\x00-\x1f]*")*)?)\]'
_T = (r'"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?'
      r'[+-][0-9]{2}:[0-9]{2})"')
_ERASED_TEXT = "\\u0000erased"  # ERASED as the encoder writes it
_PLAIN = re.compile(
    r'\{"_chain":"[0-9a-f]{64}",(?:"_sealed":"([A-Za-z0-9_-]*)\.([A-Za-z0-9+/=]*)",)?'
    rf'"tenant":{_S},"actor":{_S},"occurred_at":{_T},"correlation_id":{_S},"command_id":{_N},'
    rf'"mailbox":{_S},"thread":{_S},"message":\{{"id":{_S},"message_id":{_N},'
    rf'"thread_id":{_N},"in_reply_to":{_N},"references":(null|{_L}),"from":{_S},"to":{_L},'
    rf'"cc":{_L},"bcc":{_L},"subject":"(\\u0000erased|[^"\\\x00-\x1f]*)",'
    rf'"body":{_S},"sent_at":{_T},"labels":{_L},"attachments":\[\],'
    rf'"delivery_status":{_N},"read":(true|false)\}},"crm_initiated":(true|false),'
    r'"refused":\[\]\}')


def _texts_of(inner: str) -> list[str]:
    """The texts of a list `_L` matched (its brackets off)."""
    return inner[1:-1].split('","') if inner else []


def _text_or_null(found: str) -> str | None:
    return None if found == "null" else found[1:-1]


def decode_plain(state: bytes, keys: ContentKeys | None, content: bool = True
                 ) -> SyncedMessage | None:
    """`decode_synced` of a chained event whose texts have nothing escaped (most); None for
    any other (which `decode_synced` then reads)."""
    try:
        found = _PLAIN.fullmatch(state.decode())
    except UnicodeDecodeError:
        return None
    if found is None:
        return None
    (owner, box, tenant, actor, occurred_at, _, command_id, mailbox, thread, message_id, rfc_id,
     _, in_reply_to, references, _, sender, to, cc, bcc, subject, body, sent_at, labels,
     status, read, crm) = found.groups()
    occurred, sent = _shaped_time(occurred_at), _shaped_time(sent_at)
    if occurred is None or sent is None:
        return None
    subject = _subject(keys, content, tenant, None if owner is None else owner.encode(), box,
                       ERASED if subject == _ERASED_TEXT else subject, body)
    if subject is None:
        return None
    people, sent_text = (addresses([sender, *_texts_of(to), *_texts_of(cc), *_texts_of(bcc)]),
                         _utc_text(sent_at, sent)) if content else ((), "")
    return SyncedMessage(
        mailbox, thread, crm == "true", occurred, actor, _text_or_null(command_id), message_id,
        _text_or_null(rfc_id), _text_or_null(in_reply_to),
        () if references == "null" else tuple(_texts_of(references[1:-1])), people, subject,
        sent_text, tuple(_texts_of(labels)), read == "true", _text_or_null(status))


def _subject(keys: ContentKeys | None, content: bool, tenant: str, owner: bytes | None,
             box: str | bytes, subject: str, body: str) -> str | None:
    """The subject as the fold reads it: "" for a state without message content (nothing is
    opened), the one sealed for `owner` (ERASED when their key is destroyed), or the event's
    own; None when a sealed event's placeholders are not the mapper's or its box does not hold
    the (subject, body) the mapper seals for a message."""
    if owner is not None and (subject != ERASED or body != ""):
        return None  # the placeholders the content goes back into
    if not content:
        return ""
    if owner is None:
        return subject
    if keys is None:
        return None
    values = keys.open(tenant, _owner(owner), box)
    if values is None:
        return ERASED
    if len(values) != 2 or type(values[0]) is not str or type(values[1]) is not str:
        return None
    return values[0]


def _time(text: object) -> datetime | None:
    """The moment of a time in the encoder's form (`2025-01-01T00:00:01.25+00:00` with six
    fraction digits or none); None for any other value. (An offset's minutes must be under 60:
    `fromisoformat` reads `+05:99` as 6 h 39 min, which the model refuses.)"""
    if type(text) is not str:
        return None
    n = len(text)
    if not (n == 25 or (n == 32 and text[19] == ".")) or text[10] != "T" or text[4] != "-" \
            or text[7] != "-" or text[13] != ":" or text[16] != ":" or text[n - 3] != ":" \
            or text[n - 6] not in "+-" or text[n - 2] > "5" or not text.isascii():
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _shaped_time(text: str) -> datetime | None:
    """`_time` of a text `_PLAIN` matched: its shape is the expression's (`_T`, ASCII digits),
    so only the offset's minutes and the date itself are left to check (this runs twice for
    every synced message read)."""
    if text[-2] > "5":
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _utc_text(text: str, moment: datetime) -> str:
    """`utc_iso(moment)` of a time `_time` read from `text`: the text itself when it is in
    UTC already (and has no fraction of zeros, which the isoformat leaves out)."""
    if text.endswith("+00:00") and (len(text) == 25 or text[20:26] != "000000"):
        return text
    return moment.astimezone(UTC).isoformat()


def _texts(value: object) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _text_or_none(value: object) -> bool:
    return value is None or type(value) is str


def decode_synced(state: bytes, start: int, keys: ContentKeys | None, content: bool = True
                  ) -> SyncedMessage | None:
    """The MessageSynced stored as `state` (its own JSON from `start`, past the chain link, as
    the mapper reads it), or None when it is not in the canonical form."""
    sealed = state.startswith(SEALED_KEY, start)
    if sealed:
        begin = start + len(SEALED_KEY)
        end = state.find(b'"', begin)
        dot = state.find(b".", begin, end)
        if end < 0 or dot < 0:
            return None
        owner: bytes | None = state[begin:dot]
        box = state[dot + 1:end]
        body = b"{" + state[end + 2:]
    else:
        owner, box = None, b""
        body = b"{" + state[start:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or doc.keys() != _EVENT or orjson.dumps(doc) != body:
        return None
    msg = doc["message"]
    if type(msg) is not dict or msg.keys() != _MESSAGE:
        return None
    subject, text = msg["subject"], msg["body"]
    if not (type(doc["tenant"]) is str and type(doc["actor"]) is str
            and type(doc["correlation_id"]) is str and _text_or_none(doc["command_id"])
            and type(doc["mailbox"]) is str and type(doc["thread"]) is str
            and type(doc["crm_initiated"]) is bool and doc["refused"] == []
            and type(msg["id"]) is str and _text_or_none(msg["message_id"])
            and _text_or_none(msg["thread_id"]) and _text_or_none(msg["in_reply_to"])
            and (msg["references"] is None or _texts(msg["references"]))
            and type(msg["from"]) is str and _texts(msg["to"]) and _texts(msg["cc"])
            and _texts(msg["bcc"]) and type(subject) is str and type(text) is str
            and _texts(msg["labels"]) and msg["attachments"] == []
            and _text_or_none(msg["delivery_status"]) and type(msg["read"]) is bool):
        return None
    occurred, sent = _time(doc["occurred_at"]), _time(msg["sent_at"])
    if occurred is None or sent is None:
        return None
    # the tenant the mapper opens with (`seal._tenant`: the first field, which canonical bytes
    # hold once)
    subject = _subject(keys, content, doc["tenant"], owner, box, subject, text)
    if subject is None:
        return None
    people, sent_text = (addresses([msg["from"], *msg["to"], *msg["cc"], *msg["bcc"]]),
                         _utc_text(msg["sent_at"], sent)) if content else ((), "")
    return SyncedMessage(
        doc["mailbox"], doc["thread"], doc["crm_initiated"], occurred, doc["actor"],
        doc["command_id"], msg["id"], msg["message_id"], msg["in_reply_to"],
        tuple(msg["references"] or ()), people, subject, sent_text, tuple(msg["labels"]),
        msg["read"], msg["delivery_status"])
