"""E8: what input the engine can store faithfully, checked on every command before any rule runs.

Every event, view row and key must be storable as UTF-8 text in PostgreSQL (no NUL in `text`
or `jsonb`), in SQLite and in JSON: so no string may hold NUL or a lone surrogate anywhere. On
top of that (SPEC E8) ids, addresses, labels and names hold no control character at all, and
sizes are bounded. The bounds (docs/decisions/events-and-projections.md, "Input that cannot be
stored"):

- Free text — `body`, `subject`, `error` and the values of a contact's `fields` — may hold tab,
  line feed and carriage return (mail bodies and notes are multi-line, folded subjects keep a
  tab), and DEL / C1 characters (storable; real mail has them); no other C0 character.
- Everything else (ids, addresses, labels, names, tokens) holds no C0, DEL or C1 character.
- Characters: body 4 MiB (4,194,304), contact field values 100,000, subject 10,000, cursor
  65,536, provider ids / labels / categories / references / resource 2,048, tokens 16,384,
  error 2,000, names 1,000, addresses 320, every other string (CRM ids: tenant, user, record,
  mailbox…) 256.
- Lists at most 10,000 items (a provider page of deleted ids, `ids`: 100,000); objects (contact
  `fields`) at most 1,000 keys and 8 levels deep; integers within ±(2^53 − 1) (exact in JSON
  everywhere); floats finite.

Pure: no I/O. `refusal(model)` walks a validated command and names the first offending field by
its path (`message.subject`, `to.3`, `fields.phone`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel

__all__ = ["InputRefused", "cleaned", "could_be_id", "refusal", "safe_name"]

# NUL and every C0 control but tab / LF / CR; lone surrogates (not encodable as UTF-8)
_TEXT_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
# any C0, DEL or C1 control; lone surrogates
_STRICT_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# the UTF-8 bytes of free text other than its refused controls: deleted, what is left is refused
# (in UTF-8 a byte below 0x20 is always that ASCII character): 3x faster than the regex on a body
_TEXT_FINE = bytes(i for i in range(256) if i >= 0x20 or i in (0x09, 0x0A, 0x0D))

FREE_TEXT = frozenset({"body", "subject", "error"})
TEXT_VALUES = frozenset({"fields"})  # dicts whose values are free text (contact fields)
_PROVIDER = 2048
MAX_CHARS: dict[str, int] = {
    "body": 4 * 1024 * 1024, "subject": 10_000, "cursor": 65_536, "error": 2000,
    "name": 1000,
    **dict.fromkeys(("id", "ids", "thread_id", "thread", "threads", "message_id", "in_reply_to",
                     "references", "external_id", "delivery_id", "subscription_id",
                     "provider_id", "provider_thread_id", "request", "change_id",
                     "dead_letter_id", "command_id", "labels", "categories",
                     "allowed_attachment_types", "old", "new", "resource", "content_type"),
                    _PROVIDER),
    **dict.fromkeys(("email", "emails", "address", "from", "to", "cc", "bcc", "bcc_address",
                     "sending_domain", "host"), 320),
    **dict.fromkeys(("access_token", "refresh_token", "password"), 16_384),
}
DEFAULT_CHARS = 256
FIELD_VALUE_CHARS = 100_000
MAX_ITEMS: dict[str, int] = {"ids": 100_000}
DEFAULT_ITEMS = 10_000
MAX_KEYS = 1000
MAX_DEPTH = 8
MAX_INT = 2**53 - 1


class InputRefused(ValueError):
    """A command holds input that cannot be stored faithfully; `field` is its path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def safe_name(value: str, limit: int = 64) -> str | None:
    """`value` when it may be echoed in a rejection (no control character, short), else None."""
    return value if len(value) <= limit and not _STRICT_BAD.search(value) else None


def cleaned(value: object) -> object:
    """A service's own diagnostic (`error` of dead letters and acknowledgements): quoted from
    exceptions, so it may hold anything; its refused characters become U+FFFD instead of
    refusing the record (which would lose it)."""
    return _TEXT_BAD.sub("\ufffd", value) if isinstance(value, str) else value


def could_be_id(value: str) -> bool:
    """Whether `value` could name something stored: ids hold no control character or lone
    surrogate and are not absurdly long. A lookup of anything else is "not found" (V12)."""
    return len(value) <= 2 * _PROVIDER + 1 and not _STRICT_BAD.search(value)


def refusal(model: BaseModel) -> InputRefused | None:
    """The first field of `model` (a validated command) that cannot be stored, or None."""
    try:
        _model(model, "", 0)
    except InputRefused as exc:
        return exc
    return None


_FIELDS: dict[type[BaseModel], list[tuple[str, str]]] = {}  # class -> (attribute, JSON name)


def _model(model: BaseModel, path: str, depth: int) -> None:
    kind = type(model)
    fields = _FIELDS.get(kind)
    if fields is None:
        fields = _FIELDS[kind] = [(name, info.alias or name)
                                  for name, info in kind.model_fields.items()]
    for name, label in fields:
        value = getattr(model, name)
        if value is None or value.__class__ is bool:
            continue
        if value.__class__ is str:  # most fields: no call through `_value`, no path built
            reason = _string(value, label, False)
            if reason is not None:
                raise InputRefused(f"{path}{label}", reason)
        else:
            _value(value, f"{path}{label}", label, False, depth)


def _value(value: Any, path: str, field: str, text: bool, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InputRefused(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        reason = _string(value, field, text)
        if reason is not None:
            raise InputRefused(path, reason)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise InputRefused(path, f"must be within ±{MAX_INT}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InputRefused(path, "must be a finite number")
    elif isinstance(value, BaseModel):
        _model(value, f"{path}.", depth + 1)
    elif isinstance(value, list | tuple):
        limit = MAX_ITEMS.get(field, DEFAULT_ITEMS)
        if len(value) > limit:
            raise InputRefused(path, f"at most {limit} items")
        for i, item in enumerate(value):
            if item.__class__ is str:
                reason = _string(item, field, text)
                if reason is not None:
                    raise InputRefused(f"{path}.{i}", reason)
            else:
                _value(item, f"{path}.{i}", field, text, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_KEYS:
            raise InputRefused(path, f"at most {MAX_KEYS} keys")
        values_text = text or field in TEXT_VALUES
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputRefused(path, "keys must be strings")
            shown = safe_name(key)
            if shown is None or not key:  # say what is wrong with the key, not the key
                raise InputRefused(path, _string(key, "", False)
                                   or "a key must be 1 to 64 characters")
            _value(item, f"{path}.{shown}", field, values_text, depth + 1)
    # datetimes, enums (validated str Literals are str), UUIDs: storable by construction


def _string(value: str, field: str, text: bool) -> str | None:
    """Why `value` (of `field`; free text when `text`) cannot be stored, or None."""
    text = text or field in FREE_TEXT
    limit = MAX_CHARS.get(field, FIELD_VALUE_CHARS if text else DEFAULT_CHARS)
    if len(value) > limit:
        return f"at most {limit} characters"
    if value.isascii():
        if value.isprintable() or (text and not value.encode().translate(None, _TEXT_FINE)):
            return None  # the common cases, without the regex
    elif text:
        try:
            if not value.encode().translate(None, _TEXT_FINE):
                return None
        except UnicodeEncodeError:
            pass  # a lone surrogate: the regex finds it
    bad = (_TEXT_BAD if text else _STRICT_BAD).search(value)
    if bad is None:
        return None
    char = bad.group()
    if 0xD800 <= ord(char) <= 0xDFFF:
        return "not valid Unicode (a lone surrogate)"
    what = "NUL" if char == "\x00" else "a control character"
    return f"contains {what} (U+{ord(char):04X})"
