"""Repairs to a raw RFC 5322 message before the standard library parses it (`mime.parse_message`),
for what mail clients tolerate: a UTF-8 BOM, `Name  :` (obsolete blanks before the colon), a
stray line inside the header block, an unquoted multipart boundary holding `=`. Bytes in, bytes
out; a message needing none comes back unchanged (the usual case, checked first)."""

from __future__ import annotations

import re

_BOM = b"\xef\xbb\xbf"
_HEADER = re.compile(rb"[!-9;-~]+:")  # a field name and its colon
_OBS_HEADER = re.compile(rb"([!-9;-~]+)[ \t]+:")  # RFC 5322 obs: blanks before the colon
_KNOWN = re.compile(rb"(?i)(from|to|cc|bcc|subject|date|message-id|in-reply-to|references|sender|"
                    rb"reply-to|return-path|received|mime-version|content-[a-z-]+|x-[!-9;-~]+)"
                    rb"[ \t]*:")
# an unquoted boundary holding `=` (Outlook's `----=_NextPart_...`): the stdlib stops at `=`
_BAD_BOUNDARY = re.compile(rb'(?i)(;[ \t\r\n]*boundary[ \t]*=[ \t]*)([^\s;"]*=[^\s;"]*)')
# a header block needing no repair: an optional envelope line (not `From  :`), then fields and
# folded lines only
_HEAD_OK = re.compile(rb"(?:From (?![ \t]*:)[^\n]*\n)?(?:(?:[!-9;-~]+:|[ \t])[^\n]*(?:\n|\Z))*")
_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*")


def _repair_head(raw: bytes) -> bytes:
    """The header block as mail clients read it: a UTF-8 BOM dropped, `From  :` (obsolete blanks
    before the colon) joined, and a line that is no header in the middle of the header block
    kept as an `X-Malformed-Header` field instead of ending the block (only when a well-known
    field follows it before the blank line; otherwise it is where the body starts)."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    end = raw.find(b"\n\n")  # the blank line (find: far faster than a regex)
    end = len(raw) if end < 0 else end
    crlf = raw.find(b"\n\r\n", 0, end)
    end = crlf if crlf >= 0 else end
    head, rest = raw[:end], raw[end:]
    if _HEAD_OK.fullmatch(head):
        return raw  # the usual case: every line a field or a folded continuation
    lines = head.split(b"\n")
    changed = False
    for i, line in enumerate(lines):
        if not line.strip() or line[:1] in (b" ", b"\t") or _HEADER.match(line):
            continue
        if i == 0 and line.startswith(b"From ") and not _OBS_HEADER.match(line):
            continue  # an mbox envelope line: the parser takes it as such
        obsolete = _OBS_HEADER.match(line)
        if obsolete:
            lines[i] = obsolete.group(1) + b":" + line[obsolete.end():]
        elif any(_KNOWN.match(later) for later in lines[i + 1:]):
            lines[i] = b"X-Malformed-Header: " + line
        else:
            break  # the body starts here (a message without the blank line)
        changed = True
    return b"\n".join(lines) + rest if changed else raw


def repair(raw: bytes) -> bytes:
    """The raw message as mail clients read it (see the module docstring)."""
    raw = _repair_head(raw)
    if _BAD_BOUNDARY.search(raw) is None:
        return raw
    return _CONTENT_TYPE.sub(  # only inside Content-Type fields (with their folded lines)
        lambda f: _BAD_BOUNDARY.sub(lambda m: m.group(1) + b'"' + m.group(2) + b'"', f.group()),
        raw)
