"""An IMAP provider client (issue #4, the IMAP half; feeds SPEC S2, S12-S14 and L3/L4).

`ImapClient.connect(ImapAccount(...))` logs in (TLS, STARTTLS, or plain for loopback tests) with
credentials the caller gives; they are never logged and never appear in an exception message.

* `state(folder)` -> UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (when the server has CONDSTORE).
* `changes_since(folder, cursor)` -> new messages (UID >= cursor.uidnext, parsed by
  `adapters.providers.mime.parse_message` with provider id `<folder>/<uidvalidity>/<uid>`),
  read-state changes, deleted ids and the next cursor. A UIDVALIDITY change raises `CursorExpired`
  (the caller resyncs the backfill window, L3). `cursor=None` reads the whole folder.
* `backfill(folder, since)` -> messages whose INTERNALDATE is at or after `since`, most recent
  first, and the cursor to continue from (S2). For a backfill across folders in one order:
  `dated_since(folder, since)` (the candidates with their INTERNALDATE, no bodies) and
  `fetch_messages(folder, uidvalidity, uids)`.
* `folders()` -> the account's folders as LIST gives them (name, hierarchy delimiter,
  attributes such as `\\Noselect`, `\\Junk`, `\\Trash`).
* `encode_folder_cursors` / `decode_folder_cursors`: a mailbox's cursor, one `ImapCursor` per
  folder as a compact JSON map (`{"f":{"INBOX":{...},"Sent":{...}}}`); the single-folder cursor
  of earlier versions is read as INBOX's.

Flag changes: with CONDSTORE, `UID SEARCH MODSEQ` since the cursor's HIGHESTMODSEQ (only the
messages that changed); without it, the current read state of every known message (idempotent).
Deletions: the cursor carries the UIDs it has handed out (an IMAP sequence set such as `1:40,42`);
those the server no longer has are reported deleted. QRESYNC's VANISHED is not used (imapclient
does not parse it); comparing the UID set works on every server. Messages only flagged `\\Deleted`
are still there until expunged. A message that cannot be parsed comes back as a `Rejection`
(id + reason) and is not part of the cursor's UID set, so it is neither fetched again nor
reported deleted.

Errors: a refused login or an unreachable/broken server -> `ProviderError`; a folder that does
not exist (any more) -> `MailboxGone`; a new UIDVALIDITY -> `CursorExpired`. Nothing else from
imapclient, imaplib, ssl or socket escapes.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import imapclient  # type: ignore[import-untyped]
from imapclient import exceptions as imap_errors

from adapters.errors import CursorExpired, MailboxGone, ProviderError, UnparseableMessage
from adapters.providers.mime import parse_message
from domain.events import MailMessage

TlsMode = Literal["ssl", "starttls", "none"]
_FETCH_CHUNK = 50
_SEEN = b"\\Seen"


# -- value types -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImapAccount:
    """Where and as whom to log in. The password is kept out of `repr`."""

    host: str
    port: int
    user: str = field(repr=False)
    password: str = field(repr=False)
    tls: TlsMode = "ssl"
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    uidnext: int
    highestmodseq: int | None  # None: the server has no CONDSTORE


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


@dataclass(frozen=True)
class FolderInfo:
    """One LIST entry: the folder's name (decoded from modified UTF-7), its hierarchy delimiter
    (None: a flat namespace) and its attributes, lower-cased (`\\noselect`, `\\junk`, ...)."""

    name: str
    delimiter: str | None
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rejection:
    id: str
    reason: str


@dataclass(frozen=True)
class FlagChange:
    id: str
    read: bool
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ImapChanges:
    messages: list[MailMessage]
    cursor: ImapCursor
    flag_changes: list[FlagChange] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


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


# -- the client ------------------------------------------------------------------------------------
class ImapClient:
    """One logged-in IMAP connection. Use `ImapClient.connect(account)` as a context manager."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.condstore = bool(conn.has_capability("CONDSTORE"))

    @classmethod
    @contextmanager
    def connect(cls, account: ImapAccount) -> Iterator[ImapClient]:
        conn = _login(account)
        try:
            yield cls(conn)
        finally:
            try:
                conn.logout()
            except Exception:  # already gone: just drop the socket
                _close(conn)

    # -- folders -----------------------------------------------------------------------------------
    def folders(self) -> list[FolderInfo]:
        """Every folder LIST shows (`LIST "" "*"`), in the server's order."""
        listed = self._call("*", self._conn.list_folders)
        out: list[FolderInfo] = []
        for flags, delimiter, name in listed:
            out.append(FolderInfo(
                name=_text(name), delimiter=_text(delimiter) if delimiter else None,
                flags=frozenset(_text(f).lower() for f in flags)))
        return out

    # -- state -------------------------------------------------------------------------------------
    def state(self, folder: str) -> FolderState:
        what = [b"UIDVALIDITY", b"UIDNEXT"] + ([b"HIGHESTMODSEQ"] if self.condstore else [])
        status = self._call(folder, lambda: self._conn.folder_status(folder, what))
        return FolderState(uidvalidity=int(status[b"UIDVALIDITY"]),
                           uidnext=int(status[b"UIDNEXT"]),
                           highestmodseq=_int_or_none(status.get(b"HIGHESTMODSEQ")))

    # -- incremental sync --------------------------------------------------------------------------
    def changes_since(self, folder: str, cursor: ImapCursor | None) -> ImapChanges:
        """What changed in `folder` since `cursor` (None: everything in it)."""
        with self._selected(folder) as state:
            return self._changes(folder, state, cursor)

    def _changes(self, folder: str, state: FolderState, cursor: ImapCursor | None
                 ) -> ImapChanges:
        if cursor is not None and cursor.uidvalidity != state.uidvalidity:
            raise CursorExpired("imap", f"UIDVALIDITY of {folder!r} changed from "
                                f"{cursor.uidvalidity} to {state.uidvalidity}; resync the "
                                "backfill window")
        if cursor is not None and state.uidnext < cursor.uidnext:  # recreated, same UIDVALIDITY
            raise CursorExpired("imap", f"UIDNEXT of {folder!r} went back from {cursor.uidnext} "
                                f"to {state.uidnext}; resync the backfill window")
        known = cursor.uid_set() if cursor is not None else set()
        start = cursor.uidnext if cursor is not None else 1
        deleted_uids: set[int] = set()
        flag_changes: list[FlagChange] = []
        if known:
            present = self._search(folder, ["UID", format_uid_set(known)])
            deleted_uids = known - present
            known &= present
            flag_changes = self._flag_changes(folder, state, known, cursor)
        new_uids = sorted(u for u in self._search(folder, ["UID", f"{start}:*"]) if u >= start)
        messages, rejections, parsed = self._fetch_messages(folder, state.uidvalidity, new_uids)
        uidnext = max([state.uidnext, start, *(u + 1 for u in new_uids)])
        return ImapChanges(
            messages=messages, rejections=rejections, flag_changes=flag_changes,
            deleted=[provider_id(folder, state.uidvalidity, u) for u in sorted(deleted_uids)],
            cursor=ImapCursor(state.uidvalidity, uidnext, state.highestmodseq,
                              format_uid_set(known | parsed)))

    def _flag_changes(self, folder: str, state: FolderState, known: set[int],
                      cursor: ImapCursor | None) -> list[FlagChange]:
        if self.condstore and cursor is not None and cursor.highestmodseq is not None:
            if state.highestmodseq == cursor.highestmodseq:
                return []
            changed = self._search(folder, ["UID", format_uid_set(known),
                                            "MODSEQ", str(cursor.highestmodseq + 1)])
        else:
            changed = known  # no CONDSTORE: the current state of every known message
        out: list[FlagChange] = []
        for chunk in _chunks(sorted(changed), 500):
            fetched = self._call(folder, lambda c=chunk: self._conn.fetch(c, ["FLAGS"]))
            for uid in chunk:
                flags = fetched.get(uid, {}).get(b"FLAGS")
                if flags is None:
                    continue  # expunged meanwhile: reported deleted next time
                names = tuple(_text(f) for f in flags)
                out.append(FlagChange(provider_id(folder, state.uidvalidity, uid),
                                      read=_SEEN in flags, flags=names))
        return out

    # -- backfill ----------------------------------------------------------------------------------
    def backfill(self, folder: str, since: datetime) -> ImapChanges:
        """Messages that arrived (INTERNALDATE) at or after `since`, most recent first, with the
        cursor to continue from by `changes_since`."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        with self._selected(folder) as state:
            return self._backfill(folder, state, since)

    def dated_since(self, folder: str, since: datetime
                    ) -> tuple[FolderState, list[tuple[datetime, int]]]:
        """The folder's state and its messages that arrived at or after `since`, as
        (INTERNALDATE, UID), most recent first; no bodies are read."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        with self._selected(folder) as state:
            dates = self._dates_since(folder, since)
        return state, sorted(((when, uid) for uid, when in dates.items()), reverse=True)

    def fetch_messages(self, folder: str, uidvalidity: int, uids: Sequence[int]
                       ) -> tuple[list[MailMessage], list[Rejection], set[int]]:
        """Fetch and parse `uids` of `folder` in that order: (messages, rejections, the UIDs
        parsed). A folder whose UIDVALIDITY is no longer `uidvalidity` raises `CursorExpired`."""
        with self._selected(folder) as state:
            if state.uidvalidity != uidvalidity:
                raise CursorExpired("imap", f"UIDVALIDITY of {folder!r} changed from "
                                    f"{uidvalidity} to {state.uidvalidity}; resync the "
                                    "backfill window")
            return self._fetch_messages(folder, uidvalidity, uids)

    def _dates_since(self, folder: str, since: datetime) -> dict[int, datetime]:
        # SEARCH SINCE compares dates only, in the server's zone: a day early, then exactly
        candidates = self._search(folder, ["SINCE", (since - timedelta(days=1)).date()])
        dates: dict[int, datetime] = {}
        for chunk in _chunks(sorted(candidates), 500):
            fetched = self._call(folder, lambda c=chunk: self._conn.fetch(c, ["INTERNALDATE"]))
            for uid in chunk:
                when = fetched.get(uid, {}).get(b"INTERNALDATE")
                if isinstance(when, datetime):
                    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
                    if when >= since:
                        dates[uid] = when
        return dates

    def _backfill(self, folder: str, state: FolderState, since: datetime) -> ImapChanges:
        dates = self._dates_since(folder, since)
        order = sorted(dates, key=lambda u: (dates[u], u), reverse=True)
        messages, rejections, parsed = self._fetch_messages(folder, state.uidvalidity, order)
        uidnext = max([state.uidnext, *(u + 1 for u in order)])
        return ImapChanges(messages=messages, rejections=rejections,
                           cursor=ImapCursor(state.uidvalidity, uidnext, state.highestmodseq,
                                             format_uid_set(parsed)))

    # -- helpers -----------------------------------------------------------------------------------
    @contextmanager
    def _selected(self, folder: str) -> Iterator[FolderState]:
        """EXAMINE (read-only) `folder`, and leave it afterwards: a session that keeps a deleted
        folder selected gets that folder's stale STATUS from Dovecot."""
        if self.condstore:  # HIGHESTMODSEQ before any read: later changes are seen next time
            modseq = self.state(folder).highestmodseq
        info = self._call(folder, lambda: self._conn.select_folder(folder, readonly=True))
        try:
            if self.condstore:
                modseq = _int_or_none(info.get(b"HIGHESTMODSEQ")) or modseq
            yield FolderState(uidvalidity=int(info[b"UIDVALIDITY"]),
                              uidnext=int(info.get(b"UIDNEXT", 1)),
                              highestmodseq=modseq if self.condstore else None)
        finally:
            with suppress(Exception):  # CLOSE after EXAMINE expunges nothing
                self._conn.close_folder()

    def _search(self, folder: str, criteria: list[Any]) -> set[int]:
        found = self._call(folder, lambda: self._conn.search(criteria))
        return {int(u) for u in found}

    def _fetch_messages(self, folder: str, uidvalidity: int, uids: Sequence[int]
                        ) -> tuple[list[MailMessage], list[Rejection], set[int]]:
        """Fetch and parse `uids` in that order (BODY.PEEK: reading never sets \\Seen)."""
        messages: list[MailMessage] = []
        rejections: list[Rejection] = []
        parsed: set[int] = set()
        for chunk in _chunks(list(uids), _FETCH_CHUNK):
            fetched = self._call(folder, lambda c=chunk: self._conn.fetch(
                c, ["BODY.PEEK[]", "INTERNALDATE", "FLAGS"]))
            for uid in chunk:
                item = fetched.get(uid)
                if item is None:
                    continue  # expunged between SEARCH and FETCH
                pid = provider_id(folder, uidvalidity, uid)
                raw = item.get(b"BODY[]")
                when = item.get(b"INTERNALDATE")
                if isinstance(when, datetime) and when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                try:
                    if not isinstance(raw, bytes):
                        raise UnparseableMessage("the server sent no message body")
                    msg = parse_message(raw, pid, labels=[folder],
                                        fallback_date=when if isinstance(when, datetime) else None)
                except UnparseableMessage as exc:
                    rejections.append(Rejection(pid, exc.reason))
                    continue
                if _SEEN in item.get(b"FLAGS", ()):
                    msg = msg.model_copy(update={"read": True})
                messages.append(msg)
                parsed.add(uid)
        return messages, rejections, parsed

    def _call(self, folder: str, action: Any) -> Any:
        """Run one IMAP command; library errors become ours."""
        try:
            return action()
        except imap_errors.IMAPClientAbortError as exc:
            raise ProviderError("imap", f"connection lost: {_reason(exc)}") from None
        except imap_errors.IMAPClientError as exc:
            if not self._folder_exists(folder):
                raise MailboxGone("imap", f"folder {folder!r} does not exist") from None
            raise ProviderError("imap", f"command failed on {folder!r}: {_reason(exc)}") from None
        except (OSError, EOFError) as exc:
            raise ProviderError("imap", f"connection failed: {type(exc).__name__}: {exc}"
                                ) from None

    def _folder_exists(self, folder: str) -> bool:
        try:
            return bool(self._conn.folder_exists(folder))
        except Exception:
            return True  # cannot tell: not evidence of absence (L4)


def _login(account: ImapAccount) -> Any:
    where = f"{account.host}:{account.port}"
    try:
        conn = imapclient.IMAPClient(
            account.host, port=account.port, ssl=account.tls == "ssl",
            ssl_context=account.ssl_context, timeout=account.timeout)
        conn.normalise_times = False  # keep INTERNALDATE's zone (tz-aware datetimes)
        if account.tls == "starttls":
            conn.starttls(account.ssl_context)
    except (OSError, EOFError, imap_errors.IMAPClientError) as exc:
        raise ProviderError("imap", f"cannot connect to IMAP server {where}: "
                            f"{type(exc).__name__}: {_scrub(str(exc), account)}") from None
    try:
        conn.login(account.user, account.password)
    except imap_errors.LoginError as exc:
        _close(conn)
        raise ProviderError("imap", f"login to {where} refused: "
                            f"{_scrub(_reason(exc), account)}") from None
    except (OSError, EOFError, imap_errors.IMAPClientError) as exc:
        _close(conn)
        raise ProviderError("imap", f"login to {where} failed: {type(exc).__name__}: "
                            f"{_scrub(str(exc), account)}") from None
    return conn


def _close(conn: Any) -> None:
    with suppress(Exception):  # best effort
        conn.shutdown()


def _scrub(text: str, account: ImapAccount) -> str:
    """Servers do not echo passwords, but make sure of it."""
    return text.replace(account.password, "***") if account.password else text


def _reason(exc: BaseException) -> str:
    text = " ".join(_text(a) for a in exc.args) if exc.args else ""
    if text.startswith(("b'", 'b"')) and text[-1:] in "'\"":  # imapclient wraps server bytes
        text = text[2:-1]
    return text.strip() or type(exc).__name__


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int | str | bytes):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


__all__ = ["INBOX", "FlagChange", "FolderInfo", "FolderState", "ImapAccount", "ImapChanges",
           "ImapClient", "ImapCursor", "Rejection", "decode_folder_cursors",
           "encode_folder_cursors", "format_uid_set", "parse_uid_set", "provider_id"]
