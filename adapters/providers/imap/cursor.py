"""Where an IMAP mailbox's sync stands: one `ImapCursor` per folder (UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ and the UIDs handed out, as an IMAP sequence set), the mailbox's cursor a compact
JSON map of them (`encode_folder_cursors`), and the provider ids of IMAP messages
(`<folder>/<uidvalidity>/<uid>`). Pure values: the client (`imap.client`) and the source
(`imap.source`) use them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImapCursor:
    """Where a folder's sync stands: everything below `uidnext` has been seen; `uids` are the
    UIDs handed out and still present (an IMAP sequence set, `""` for none)."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int | None = None
    uids: str = ""

    def encode(self) -> str:
        return json.dumps(self.as_data(), separators=(",", ":"))

    def as_data(self) -> dict[str, Any]:
        return {"v": self.uidvalidity, "n": self.uidnext, "m": self.highestmodseq,
                "u": self.uids}

    @classmethod
    def decode(cls, text: str) -> ImapCursor:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not an IMAP cursor: {exc}") from None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Any) -> ImapCursor:
        try:
            modseq = data["m"]
            cursor = cls(uidvalidity=int(data["v"]), uidnext=int(data["n"]),
                         highestmodseq=None if modseq is None else int(modseq),
                         uids=str(data["u"]))
            parse_uid_set(cursor.uids)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not an IMAP cursor: {exc!r}") from None
        return cursor

    def uid_set(self) -> set[int]:
        return parse_uid_set(self.uids)


# -- UID sets --------------------------------------------------------------------------------------
def format_uid_set(uids: Iterable[int]) -> str:
    """`{1,2,3,5}` -> `1:3,5`."""
    runs: list[list[int]] = []
    for uid in sorted(set(uids)):
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def parse_uid_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition(":")
        a, b = int(first), int(last or first)
        if a < 1 or b < a:
            raise ValueError(f"bad UID range {part!r}")
        out.update(range(a, b + 1))
    return out


def provider_id(folder: str, uidvalidity: int, uid: int) -> str:
    return f"{folder}/{uidvalidity}/{uid}"


# -- a mailbox's cursor: one per folder ------------------------------------------------------------
INBOX = "INBOX"


def encode_folder_cursors(cursors: Mapping[str, ImapCursor]) -> str:
    """`{"f":{folder: cursor, ...}}`, folders sorted, no spaces."""
    return json.dumps({"f": {name: cursors[name].as_data() for name in sorted(cursors)}},
                      separators=(",", ":"), ensure_ascii=False)


def decode_folder_cursors(text: str) -> dict[str, ImapCursor]:
    """The folder -> cursor map of `encode_folder_cursors`; a bare `ImapCursor` (the INBOX-only
    cursor of earlier versions) is INBOX's. Anything else: `ValueError("not an IMAP cursor: …")`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not an IMAP cursor: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not an IMAP cursor: not a JSON object")
    if "f" not in data:  # the single-folder cursor (INBOX) of earlier versions
        return {INBOX: ImapCursor.from_data(data)}
    folders = data["f"]
    if len(data) != 1 or not isinstance(folders, dict):
        raise ValueError('not an IMAP cursor: expected {"f": {folder: cursor}}')
    out: dict[str, ImapCursor] = {}
    for name, cursor in folders.items():
        if not name:
            raise ValueError("not an IMAP cursor: a folder without a name")
        out[name] = ImapCursor.from_data(cursor)
    return out


def is_single_folder_cursor(text: str) -> bool:
    """A cursor of the INBOX-only sync of earlier versions (`decode_folder_cursors` reads it)?"""
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and "f" not in data
