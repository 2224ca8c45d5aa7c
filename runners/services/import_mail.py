"""`crmsync import-mail`: .eml files, mbox files and Maildir folders into a connected mailbox
(issue #13 point 15: a Google Takeout mbox, an old IMAP server's Maildir, an auditor's archive).

Every message goes through `adapters.providers.mime.parse_message` and becomes the sync workers' own
`SyncMessage`, applied in batches through `Engine.execute_batch`, so the sync rules (S3-S14) are
the same as for provider mail. The provider id of an imported message is derived from its
Message-ID (`import:<sha256 of the id>`), or from its bytes when it has none, so a second run
finds every message again (S14) and reports it unchanged.

    PATH            what it is
    directory       a Maildir: the files in cur/ and new/ (the `S` flag marks a message read)
    file "From "    an mbox: From_-separated (mboxo/mboxrd, `>From ` unescaped once) or with
                    Content-Length headers (mboxcl2), read as a stream; `.gz` is unpacked
    other file      one message (.eml; also one starting `From:` or obsolete `From  :`)

Counts: imported (MessageSynced), unchanged (already there: a message with this Message-ID in the
mailbox, e.g. synced from the provider, the same id, or the provider copy of a CRM-sent message),
rejected: unparseable (the MIME adapter's reason), skipped by a sync rule
(`skipped: <reason>`, e.g. out_of_scope) or a rejected command. Each rejection is `PATH[#n]:
reason` (n: the message's number in an mbox).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from adapters.errors import UnparseableMessage
from adapters.providers.mime import normalise_message_id, parse_message
from domain import commands as c
from domain import events as ev
from runners.services.engine import Engine

ACTOR = "system:import"
BATCH = 200
# an mbox envelope line: `From <sender> <asctime>` (a time is what tells it from body text)
_FROM_LINE = re.compile(rb"From \S*\s.*\d\d?:\d\d")
_HEADER_FROM = re.compile(rb"From[ \t]*:")  # `From:`, obsolete `From  :`: a header, no envelope
_ESCAPED_FROM = re.compile(rb">+From ")
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:[ \t]*(\d+)[ \t]*\r?$")
_BLANK = (b"\n", b"\r\n")


@dataclass(frozen=True)
class Found:
    """One raw message, where it came from, and how far into the input we are (bytes)."""

    where: str
    raw: bytes | None  # None: unreadable (then `reason`)
    position: int
    read: bool = False
    reason: str = ""


@dataclass
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (PATH[#n], reason)

    def summary(self) -> str:
        return f"{self.imported} imported, {self.unchanged} unchanged, " \
               f"{len(self.rejected)} rejected"


# -- reading the inputs ---------------------------------------------------------------------------
class _Lines:
    """Lines of a binary stream with push-back (to undo a Content-Length that did not fit)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.back: list[bytes] = []  # pushed-back lines, the next one last

    def line(self) -> bytes:
        return self.back.pop() if self.back else self.fh.readline()

    def push(self, *lines: bytes) -> None:
        self.back.extend(reversed([x for x in lines if x]))

    def read(self, n: int) -> bytes:
        data = b"".join(reversed(self.back))
        self.back = []
        if len(data) < n:
            return data + self.fh.read(n - len(data))
        self.push(*data[n:].splitlines(keepends=True))
        return data[:n]


def _content_length(head: Sequence[bytes]) -> int | None:
    for line in head:
        found = _CONTENT_LENGTH.match(line)
        if found:
            return int(found.group(1))
    return None


def iter_mbox(fh: IO[bytes]) -> Iterator[bytes]:
    """The messages of an mbox, one at a time (the From_ lines dropped). A message with a
    Content-Length that ends exactly before the next From_ line (or the end) is read by length;
    otherwise the next From_ line after a blank line ends it, and `>From ` lines lose one `>`."""
    lines = _Lines(fh)
    line = lines.line()
    while line and not _FROM_LINE.match(line):  # junk before the first envelope line
        line = lines.line()
    while line:
        head: list[bytes] = []
        while (line := lines.line()):
            head.append(line)
            if line in _BLANK:
                break
        length = _content_length(head)
        if length is not None and head and head[-1] in _BLANK:
            data = lines.read(length)
            after = lines.line()
            then = lines.line() if after in _BLANK else b""
            if len(data) == length and (not after or _FROM_LINE.match(after) or (
                    after in _BLANK and (not then or _FROM_LINE.match(then)))):
                if after and not _FROM_LINE.match(after):
                    after = then  # the blank separator line
                elif then:
                    lines.push(then)
                yield b"".join(head) + data
                line = after
                continue
            lines.push(*data.splitlines(keepends=True), after, then)  # not that: by From_ lines
        body: list[bytes] = []
        blank = not head or head[-1] in _BLANK
        while (line := lines.line()):
            if blank and _FROM_LINE.match(line):
                break
            body.append(line[1:] if _ESCAPED_FROM.match(line) else line)
            blank = line in _BLANK
        if body and body[-1] in _BLANK:
            body.pop()  # the blank line before the next From_ belongs to the mbox, not the mail
        yield b"".join(head) + b"".join(body)


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(the file on disk, the bytes to read): `.gz` is unpacked on the fly."""
    raw = path.open("rb")
    if path.suffix == ".gz":
        return raw, gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    return raw, raw


def _maildir_read(name: str) -> bool:
    return ":2," in name and "S" in name.rsplit(":2,", 1)[1]


def find_messages(paths: Sequence[str]) -> Iterator[Found]:
    """Every message under `paths`, in order, streamed; an unreadable path is a Found with a
    reason. `position` counts the bytes of the files on disk read so far (for a progress bar)."""
    done = 0
    for given in paths:
        path = Path(given)
        try:
            if path.is_dir():
                files = [f for sub in ("new", "cur") if (path / sub).is_dir()
                         for f in sorted((path / sub).iterdir()) if not f.name.startswith(".")]
                if not files and not any((path / sub).is_dir() for sub in ("new", "cur")):
                    yield Found(given, None, done, reason="not a Maildir folder (no cur/ or new/)")
                    continue
                for f in files:
                    data = f.read_bytes()
                    done += len(data)
                    yield Found(str(f), data, done, read=_maildir_read(f.name))
                continue
            disk, fh = _open(path)
            with disk, fh:
                first = fh.readline(4096)
                if not _FROM_LINE.match(first) or _HEADER_FROM.match(first):
                    data = first + fh.read()
                    done += disk.tell()
                    yield Found(given, data, done)
                    continue
                stream = io.BufferedReader(_Prefixed(first, fh))
                start = done
                for n, data in enumerate(iter_mbox(stream), 1):
                    yield Found(f"{given}#{n}", data, start + disk.tell())
                done = start + disk.tell()
        except OSError as exc:
            yield Found(given, None, done, reason=f"cannot read: {exc.strerror or exc}")
        except (EOFError, gzip.BadGzipFile) as exc:
            yield Found(given, None, done, reason=f"cannot read: {exc}")


class _Prefixed(io.RawIOBase):
    """`prefix` then the rest of `fh` (the line read to tell an mbox from one message)."""

    def __init__(self, prefix: bytes, fh: IO[bytes]) -> None:
        self.prefix = prefix
        self.fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.prefix:
            n = min(len(view), len(self.prefix))
            view[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.fh.read(len(view))
        view[:len(data)] = data
        return len(data)


def total_bytes(paths: Sequence[str]) -> int:
    total = 0
    for given in paths:
        path = Path(given)
        try:
            if path.is_dir():
                total += sum(f.stat().st_size for sub in ("new", "cur") if (path / sub).is_dir()
                             for f in (path / sub).iterdir() if not f.name.startswith("."))
            else:
                total += path.stat().st_size
        except OSError:
            continue
    return total


# -- importing ------------------------------------------------------------------------------------
def provider_id(message_id: str | None, raw: bytes) -> str:
    """The stable provider id of an imported message: from its Message-ID, else its bytes (line
    ends and trailing blank lines normalised: the same mail from an mbox and as a file)."""
    if message_id:
        return "import:" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    canonical = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").rstrip()
    return "import:sha256:" + hashlib.sha256(canonical).hexdigest()[:32]


def to_message(found: Found, labels: Sequence[str]) -> ev.MailMessage:
    """Raises UnparseableMessage with the adapter's reason."""
    assert found.raw is not None
    msg = parse_message(found.raw, "import:pending", labels=labels)
    pid = provider_id(normalise_message_id(msg.message_id), found.raw)
    return msg.model_copy(update={"id": pid, "read": found.read})


def _outcome(events: Sequence[ev.DomainEvent]) -> str | None:
    """None: imported or unchanged (see the caller); else the rejection reason."""
    for e in events:
        if isinstance(e, ev.MessageSkipped):
            return f"skipped: {e.reason}"
        if isinstance(e, ev.CommandRejected):
            return f"rejected: {e.field}: {e.reason}"
    return None


def import_mail(engine: Engine, tenant: str, mailbox: str, paths: Sequence[str], *,
                labels: Sequence[str] = (), batch_size: int = BATCH,
                progress: Callable[[int], None] | None = None,
                clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> ImportReport:
    """Import every message under `paths`; at most `batch_size` parsed messages are held."""
    report = ImportReport()
    batch: list[tuple[str, c.SyncMessage]] = []
    state = engine.state(tenant)

    def flush() -> None:
        nonlocal state
        if not batch:
            return
        results = engine.execute_batch([cmd for _, cmd in batch], now=clock(),
                                       correlation_id=f"import:{uuid.uuid4()}")
        for (where, _), events in zip(batch, results, strict=True):
            reason = _outcome(events)
            if reason is not None:
                report.rejected.append((where, reason))
            elif any(isinstance(e, ev.MessageSynced) for e in events):
                report.imported += 1
            else:
                report.unchanged += 1
        batch.clear()
        state = engine.state(tenant)

    for found in find_messages(paths):
        if found.raw is None:
            report.rejected.append((found.where, found.reason))
        else:
            try:
                msg = to_message(found, labels)
            except UnparseableMessage as exc:
                report.rejected.append((found.where, exc.reason))
            else:
                if msg.message_id and (mailbox, msg.message_id) in state.rfc_index:
                    report.unchanged += 1  # synced already (from the provider or imported)
                    if progress is not None:
                        progress(found.position)
                    continue
                batch.append((found.where, c.SyncMessage(
                    cmd="SyncMessage", tenant=tenant, actor=ACTOR, mailbox=mailbox,
                    message=msg)))
                if len(batch) >= batch_size:
                    flush()
        if progress is not None:
            progress(found.position)
    flush()
    return report


# -- the command ----------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser("import-mail", help="import .eml files, mbox files and Maildir folders "
                       "into a connected mailbox (idempotent by Message-ID)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--mailbox", required=True)
    p.add_argument("--label", action="append", default=[], metavar="LABEL",
                   help="a label (folder) for every imported message; repeatable")
    p.add_argument("--batch-size", type=int, default=BATCH, help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="+", metavar="PATH")


def run_import(engine: Engine, args: argparse.Namespace) -> int:
    """Exit 0, 1 when anything was rejected, 2 when the mailbox does not exist."""
    if args.mailbox not in engine.state(args.tenant).mailboxes:
        sys.stderr.write(f"crmsync: no mailbox {args.mailbox!r} in tenant {args.tenant!r}\n")
        return 2
    bar: Any = None
    update: Callable[[int], None] | None = None
    if sys.stdout.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("import-mail", total=total_bytes(args.paths) or None)
        bar.start()

        def update(position: int) -> None:
            bar.update(task, completed=position)
    try:
        report = import_mail(engine, args.tenant, args.mailbox, args.paths, labels=args.label,
                             batch_size=max(1, args.batch_size), progress=update)
    finally:
        if bar is not None:
            bar.stop()
    for where, reason in report.rejected:
        sys.stderr.write(f"{where}: {reason}\n")
    sys.stdout.write(report.summary() + "\n")
    return 1 if report.rejected else 0
