"""One raw RFC 5322 message (bytes) -> a `MailMessage` (issue #4, feeding SPEC S13/S14).

Standard library only: `email` with `policy.default` for the structured headers (encoded words,
RFC 2231 parameters, address lists), with our own fallbacks wherever it gives up, and the raw
header text for the ids and dates. Best effort everywhere; a message that cannot become a valid
`MailMessage` raises `UnparseableMessage(reason)` and nothing else escapes.

* From: the first address of `From`, else of `Sender`; none -> rejected.
* sent_at: `Date`; else the caller's `fallback_date` (the provider's internal date: Gmail
  `internalDate`, Graph `receivedDateTime`, IMAP `INTERNALDATE`); else the newest (topmost)
  `Received` header's date; none -> rejected. A date without a zone (or `-0000`) is UTC; years
  outside 1970..9999 count as unusable.
* Message-ID / In-Reply-To / References: normalised to `<id>` (whitespace and comments dropped);
  References tolerate folding, commas, missing brackets and junk between ids; duplicates and the
  message's own id are dropped. In-Reply-To takes the first id that is not the sender's
  address; in prose (`Message from Ralf <ralf@x.de> of "..." <id@host>`) the last one.
* From/To/Cc/Bcc: valid addresses only (one local part, one domain, no blanks or quotes); an
  invalid From falls back to Sender, else the message is rejected with the raw header text.
* body: the first inline text/plain part, else the first text/html part as text, else the first
  other inline text part (richtext/enriched without their commands); attachments: every leaf
  part with a filename or `Content-Disposition: attachment` (forwarded messages included),
  size = decoded bytes. Nothing is written anywhere.
* Before parsing, what mail clients tolerate is repaired (`_prepare`): a UTF-8 BOM, `Name  :`,
  a stray line inside the header block, an unquoted boundary holding `=`.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email import policy
from email.header import decode_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

from pydantic import ValidationError

from adapters.errors import UnparseableMessage
from domain.events import Attachment, MailMessage

_ANGLE = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\([^()]*\)")
_WS = re.compile(r"\s+")
_BLOCK_TAGS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table",
               "blockquote", "pre", "hr"}


# -- text helpers -------------------------------------------------------------------------------
_SURROGATES = re.compile("[\udc80-\udcff]+")


def _unescape_run(match: re.Match[str]) -> str:
    data = match.group().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def clean_text(text: str) -> str:
    """Undo surrogate escapes (raw 8-bit header bytes), run by run: UTF-8 if it is, else cp1252."""
    return _SURROGATES.sub(_unescape_run, text)


# labels mail software writes for what is really the superset (what browsers do too)
_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
                    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "iso-8859-1": "cp1252",
                    "latin1": "cp1252", "us-ascii": "utf-8", "ascii": "utf-8",
                    "unknown-8bit": "utf-8", "x-unknown": "utf-8"}


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset; wrong or unknown labels fall back to UTF-8, then cp1252."""
    if charset:
        charset = charset.strip().strip("\"'").lower()
        charset = _CHARSET_ALIASES.get(charset, charset)
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252", "replace")


def decode_words(raw: str) -> str:
    """RFC 2047 encoded words of an unstructured header, tolerant of unknown charsets."""
    text = _WS.sub(" ", clean_text(raw)).strip()
    if "=?" in text:
        try:
            parts = decode_header(text)
        except Exception:
            return clean_text(text)
        # unencoded runs come back as raw-unicode-escape bytes (charset None)
        text = "".join(p if isinstance(p, str) else p.decode("raw-unicode-escape") if c is None
                       else decode_bytes(p, c) for p, c in parts)
    return clean_text(text)


def _raw_headers(msg: Message, name: str) -> list[str]:
    name = name.lower()
    return [str(v) for k, v in msg.raw_items() if k.lower() == name]


def _header_text(msg: EmailMessage, name: str) -> str:
    raws = _raw_headers(msg, name)
    if not raws:
        return ""
    try:
        value = msg[name]
        text = str(value) if value is not None else ""
    except Exception:
        text = decode_words(raws[0])
    if "=?" in text or "\ufffd" in text:  # left encoded, or an unknown/mislabelled charset
        ours = decode_words(raws[0])
        if ours.count("\ufffd") < text.count("\ufffd") or "=?" in text:
            text = ours
    return _WS.sub(" ", clean_text(text)).strip()


# -- ids ------------------------------------------------------------------------------------------
def normalise_message_id(value: str | None) -> str | None:
    """`<local@domain>` from a Message-ID-like header value, or None when there is none."""
    ids = message_ids(value)
    return ids[0] if ids else None


def message_ids(value: str | None) -> list[str]:
    """Every id in a References / In-Reply-To / Message-ID value, in order, normalised."""
    if not value:
        return []
    text = clean_text(value)
    found = [_WS.sub("", m) for m in _ANGLE.findall(text)]
    found = [f for f in found if f]
    if not found:  # garbled: no brackets at all; keep the tokens that look like ids
        bare = _COMMENT.sub(" ", text)
        found = [t.strip("\"'") for t in re.split(r"[\s,;]+", bare) if "@" in t]
    return [f"<{f}>" for f in found if f and len(f) <= 998]


def parse_references(value: str | None, own_id: str | None = None) -> list[str]:
    out: list[str] = []
    for mid in message_ids(value):
        if mid != own_id and mid not in out:
            out.append(mid)
    return out


def _in_reply_to(msg: Message, sender: str, own: str | None) -> list[str]:
    """In-Reply-To's ids, the parent first. Prose (`Message from Ralf <ralf@x.de> of "..."
    <1584@jupiter>`, old mailers) names the message last: then the last id (not the sender's
    address, not the message's own id) wins; a plain list keeps its order."""
    out: list[str] = []
    for raw in _raw_headers(msg, "in-reply-to"):
        text = clean_text(raw)
        ids = [m for m in message_ids(text) if m != own and m[1:-1].lower() != sender]
        prose = _ANGLE.sub(" ", _COMMENT.sub(" ", text)).strip(" \t\r\n,;")
        if prose and "<" in text and len(ids) > 1:
            ids = [ids[-1], *ids[:-1]]
        out += [m for m in ids if m not in out]
    return out


# -- dates ----------------------------------------------------------------------------------------
def parse_date(value: str | None) -> datetime | None:
    """A tz-aware datetime from an RFC 5322 date (obsolete forms too), or None."""
    if not value:
        return None
    text = _WS.sub(" ", _COMMENT.sub(" ", clean_text(value))).strip()
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or not 1970 <= parsed.year <= 9999:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _received_date(msg: Message) -> datetime | None:
    for raw in _raw_headers(msg, "received"):  # topmost first: the newest hop
        if ";" in raw:
            found = parse_date(raw.rsplit(";", 1)[1])
            if found is not None:
                return found
    return None


# -- addresses ------------------------------------------------------------------------------------
# one local part, one domain, nothing that a parser had to glue together (quotes, blanks, a
# second @): what is left of `Big Bug bb@bug.com` or `develop!nextmime@ebony@sblab.att.com`
_ADDRESS = re.compile(r"[^\s@\"<>(),;:\\\[\]]+@[^\s@\"<>(),;:\\\[\]]+")


def valid_address(address: str) -> bool:
    return _ADDRESS.fullmatch(address) is not None and ".." not in address \
        and not address.endswith(".")


def _addresses(msg: EmailMessage, name: str) -> list[str]:
    """The valid addresses of a header, normalised, in order. Invalid ones are left out: they
    can match no user or record (the From's raw text goes into the rejection instead)."""
    raws = _raw_headers(msg, name)
    if not raws:
        return []
    pairs: list[str] = []
    try:
        for header in msg.get_all(name) or []:
            for addr in getattr(header, "addresses", ()):
                pairs.append(addr.addr_spec)
    except Exception:
        pairs = []
    if not pairs or not all("@" in p for p in pairs):
        pairs = [a for _, a in getaddresses([decode_words(r) for r in raws])]
    out: list[str] = []
    for pair in pairs:
        a = _WS.sub("", clean_text(pair)).strip("<>'").lower()
        if valid_address(a) and a not in out:
            out.append(a)
    return out


# -- body and attachments -------------------------------------------------------------------------
class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        return re.sub(r"<[^>]*>", " ", html).strip()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _part_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return clean_text(raw) if isinstance(raw, str) else ""
    charset = None
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(payload, charset).replace("\r\n", "\n")


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    if name is None:
        return None
    name = decode_words(str(name))
    return _WS.sub(" ", name).strip() or None


def _is_attachment(part: Message) -> bool:
    try:
        disposition = part.get_content_disposition()
    except Exception:
        disposition = None
    return disposition == "attachment" or _filename(part) is not None


def _leaves(part: Message) -> Iterator[Message]:
    """Leaf parts, not descending into attached messages (they are attachments themselves)."""
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    yield from _leaves(sub)
        return
    yield part


def _attachment(part: Message, number: int) -> Attachment:
    ctype = part.get_content_type()
    name = _filename(part)
    if name is None:
        ext = ".eml" if ctype == "message/rfc822" else (mimetypes.guess_extension(ctype) or "")
        name = f"attachment-{number}{ext}"
    try:
        if part.is_multipart():  # message/rfc822: its serialised size
            size = len(part.as_bytes())
        else:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
    except Exception:
        size = 0
    return Attachment(name=name, size=size, content_type=ctype)


def enriched_to_text(text: str) -> str:
    """text/richtext (RFC 1341) and text/enriched (RFC 1896): drop the formatting commands;
    `<<` is a literal `<`, `<nl>` a line break (richtext)."""
    text = re.sub(r"(?i)<(nl|lt)>", lambda m: "\n" if m.group(1).lower() == "nl" else "\x00",
                  text.replace("<<", "\x00"))
    text = re.sub(r"(?is)<param>.*?</param>", "", text)
    text = re.sub(r"</?[A-Za-z0-9-]{1,60}>", "", text)
    return text.replace("\x00", "<").strip()


def _body_and_attachments(msg: EmailMessage) -> tuple[str, list[Attachment]]:
    plain: str | None = None
    html: str | None = None
    other: str | None = None  # richtext, enriched, any other inline text: kept, not dropped
    attachments: list[Attachment] = []
    for part in _leaves(msg):
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            continue  # a multipart whose boundary never occurs: nothing usable inside
        is_attachment = part.is_multipart() or _is_attachment(part)  # message/rfc822 or named
        if not is_attachment and ctype == "text/plain":
            if plain is None:
                plain = _part_text(part)
        elif not is_attachment and ctype == "text/html":
            if html is None:
                html = _part_text(part)
        elif is_attachment or part.get_content_maintype() != "text":
            attachments.append(_attachment(part, len(attachments) + 1))
        elif other is None:
            other = _part_text(part)
            if ctype in ("text/richtext", "text/enriched"):
                other = enriched_to_text(other)
    if plain is not None and plain.strip():
        return plain.strip("\n"), attachments
    if html is not None:
        return html_to_text(html), attachments
    if other is not None and other.strip():
        return other.strip("\n"), attachments
    return (plain or "").strip("\n"), attachments


# -- repairs before parsing (what mail clients tolerate) -------------------------------------------
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


def _prepare(raw: bytes) -> bytes:
    raw = _repair_head(raw)
    if _BAD_BOUNDARY.search(raw) is None:
        return raw
    return _CONTENT_TYPE.sub(  # only inside Content-Type fields (with their folded lines)
        lambda f: _BAD_BOUNDARY.sub(lambda m: m.group(1) + b'"' + m.group(2) + b'"', f.group()),
        raw)


# -- the entry point ------------------------------------------------------------------------------
def parse_message(raw: bytes, provider_id: str, *, fallback_date: datetime | None = None,
                  labels: Sequence[str] = (), thread_id: str | None = None) -> MailMessage:
    """Parse one raw message; `provider_id` becomes `MailMessage.id`.

    Raises UnparseableMessage (only) when no valid MailMessage can be made.
    """
    if not isinstance(raw, bytes | bytearray) or not raw.strip():
        raise UnparseableMessage("empty message")
    try:
        msg = BytesParser(policy=policy.default).parsebytes(_prepare(bytes(raw)))
        assert isinstance(msg, EmailMessage)
        return _build(msg, provider_id, fallback_date, labels, thread_id)
    except UnparseableMessage:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UnparseableMessage(f"invalid message: {where}: {first['msg']}") from exc
    except RecursionError as exc:
        raise UnparseableMessage("broken MIME: nested too deeply") from exc
    except Exception as exc:
        raise UnparseableMessage(f"broken MIME: {type(exc).__name__}: {exc}") from exc


def _build(msg: EmailMessage, provider_id: str, fallback_date: datetime | None,
           labels: Sequence[str], thread_id: str | None) -> MailMessage:
    senders = _addresses(msg, "from") + _addresses(msg, "sender")
    if not senders:
        given = [decode_words(r) for r in _raw_headers(msg, "from") + _raw_headers(msg, "sender")]
        given = [g for g in given if g]
        if given:  # the raw text, so whoever reads the rejection sees what was sent
            raise UnparseableMessage(f"invalid From address: {given[0][:200]!r}")
        raise UnparseableMessage("no usable From address")
    sent_at = None
    for raw_date in _raw_headers(msg, "date"):
        sent_at = parse_date(raw_date)
        if sent_at is not None:
            break
    if sent_at is None and fallback_date is not None and fallback_date.tzinfo is not None:
        sent_at = fallback_date
    if sent_at is None:
        sent_at = _received_date(msg)
    if sent_at is None:
        raise UnparseableMessage("no usable Date (no Date header, fallback or Received date)")
    own = normalise_message_id(next(iter(_raw_headers(msg, "message-id")), None))
    replied = _in_reply_to(msg, senders[0], own)
    refs: list[str] = []
    for r in _raw_headers(msg, "references"):
        refs += [m for m in parse_references(r, own) if m not in refs]
    body, attachments = _body_and_attachments(msg)
    return MailMessage(
        id=provider_id, message_id=own, thread_id=thread_id,
        in_reply_to=replied[0] if replied else None, references=refs or None,
        from_=senders[0], to=_addresses(msg, "to"), cc=_addresses(msg, "cc"),
        bcc=_addresses(msg, "bcc"), subject=_header_text(msg, "subject"), body=body,
        sent_at=sent_at, labels=list(labels), attachments=attachments)
