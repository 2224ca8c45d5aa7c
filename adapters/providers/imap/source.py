"""IMAP as a `MailSource` (adapters.providers.sources): every folder in the mailbox's S1 scope
(`folders_in_scope`), one `ImapCursor` per folder in one mailbox cursor; no push channel (IMAP
is polled)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from adapters.errors import CursorExpired, MailboxGone
from adapters.providers.imap.client import FolderInfo, FolderState, ImapAccount, ImapClient
from adapters.providers.imap.cursor import (
    INBOX,
    ImapCursor,
    decode_folder_cursors,
    encode_folder_cursors,
    format_uid_set,
    is_single_folder_cursor,
)
from adapters.providers.sources import (
    DRAFT_NAMES,
    JUNK_NAMES,
    TRASH_NAMES,
    Changes,
    FlagUpdate,
    PushChannel,
    ResyncPage,
)
from domain.events import MailMessage

# `\All` and `\Flagged` are virtual folders that hold copies of mail in the real ones.
_UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})
_SPECIAL_LEFT_OUT = frozenset({"\\junk", "\\trash", "\\drafts", "\\all", "\\flagged"})


def _is_junk_or_trash(folder: FolderInfo) -> bool:
    if folder.flags & _SPECIAL_LEFT_OUT:
        return True
    parts = folder.name.split(folder.delimiter) if folder.delimiter else [folder.name]
    top = len(parts) == 1 or (len(parts) == 2 and parts[0].upper() == INBOX)
    return top and parts[-1].casefold() in JUNK_NAMES | TRASH_NAMES | DRAFT_NAMES


def folders_in_scope(listing: Sequence[FolderInfo], selected: Sequence[str] | None
                     ) -> list[str]:
    """The folders to sync, INBOX first, then by name. `selected` None (scope "all"): every
    selectable folder except Junk, Trash and Drafts (flagged `\\Junk`/`\\Trash`/`\\Drafts`,
    or named like them at the top level or below INBOX), the virtual `\\All` and `\\Flagged`,
    and the folders below those; else the selected folders
    that exist and are selectable (exact names: they are also the messages' labels)."""
    selectable = [f for f in listing if not f.flags & _UNSELECTABLE]
    if selected is not None:
        wanted = set(selected)
        names = {f.name for f in selectable if f.name in wanted}
    else:
        left_out = [f for f in listing if _is_junk_or_trash(f)]
        names = {f.name for f in selectable
                 if not any(f.name == x.name or (x.delimiter is not None
                                                 and f.name.startswith(x.name + x.delimiter))
                            for x in left_out)}
    return sorted(names, key=lambda name: (name != INBOX, name))


class ImapSource:
    """An IMAP account's folders in the mailbox's scope (a connection per call: polls are
    minutes apart).

    The cursor is one `ImapCursor` per folder (`encode_folder_cursors`; the INBOX-only cursor of
    earlier versions is read as INBOX's). `changes` LISTs the folders each time: a folder in the
    cursor continues from its cursor; a folder new to it was created (or came into scope) after
    the last sync, so it is read whole: mail the user moved into it keeps its history however
    old it is (L3, L4; its old copies are reported deleted in the same page). Only next to an
    INBOX-only cursor of earlier versions are the other folders backfilled within the S2 window
    (`backfill_days` before now), as on a first sync. A folder that is gone or out
    of scope drops out of the cursor and nothing of it is reported deleted (L4). A new
    UIDVALIDITY in any folder (or a cursor that cannot be read) -> `CursorExpired`: the caller
    resyncs the mailbox. All folders come as one page, so a message moved between two synced
    folders is one batch: its new copy and the deletion of the old one.

    `resync` reads the INTERNALDATEs of every folder's window first, then fetches the messages
    in pages of `page_size`, most recent first across folders, and ends with the combined
    cursor. `MailboxGone` for INBOX is the account's (reported gone, L4); another folder that
    vanishes between LIST and SELECT is skipped."""

    push: PushChannel | None = None  # IMAP is polled

    def __init__(self, account: ImapAccount, *, folders: Sequence[str] | None = None,
                 backfill_days: int = 30, clock: Callable[[], datetime] | None = None,
                 page_size: int = 200) -> None:
        self.account, self.folders, self.backfill_days = account, folders, backfill_days
        self.clock = clock or (lambda: datetime.now(UTC))
        self.page_size = page_size

    def changes(self, address: str, cursor: str) -> Changes:
        try:
            known = decode_folder_cursors(cursor)
        except ValueError:
            raise CursorExpired("imap", "the stored cursor is not an IMAP cursor") from None
        since = self.clock() - timedelta(days=self.backfill_days)
        if not is_single_folder_cursor(cursor):
            since = datetime(1970, 1, 1, tzinfo=UTC)  # a new folder is read whole
        cursors: dict[str, ImapCursor] = {}
        messages: list[MailMessage] = []
        deleted: list[str] = []
        updates: list[FlagUpdate] = []
        skipped: list[tuple[str, str]] = []
        with ImapClient.connect(self.account) as client:
            for folder in folders_in_scope(client.folders(), self.folders):
                before = known.get(folder)
                try:
                    found = client.changes_since(folder, before) if before is not None \
                        else client.backfill(folder, since)
                except MailboxGone:
                    if folder == INBOX:
                        raise
                    continue  # gone since LIST: as if it were not listed (L4)
                cursors[folder] = found.cursor
                messages += found.messages
                deleted += found.deleted
                updates += [FlagUpdate(f.id, read=f.read) for f in found.flag_changes]
                skipped += [(r.id, r.reason) for r in found.rejections]
        return Changes(messages=messages, deleted_ids=deleted,
                       new_cursor=encode_folder_cursors(cursors), updates=updates,
                       skipped=skipped)

    def resync(self, address: str, since: datetime) -> Iterator[ResyncPage]:
        with ImapClient.connect(self.account) as client:
            states: dict[str, FolderState] = {}
            plan: list[tuple[datetime, str, int]] = []
            for folder in folders_in_scope(client.folders(), self.folders):
                try:
                    state, dated = client.dated_since(folder, since)
                except MailboxGone:
                    if folder == INBOX:
                        raise
                    continue
                states[folder] = state
                plan += [(when, folder, uid) for when, uid in dated]
            plan.sort(reverse=True)  # most recent first (INTERNALDATE), across folders
            parsed: dict[str, set[int]] = {folder: set() for folder in states}
            for start in range(0, len(plan), self.page_size):
                yield self._page(client, states, plan[start:start + self.page_size], parsed)
        cursors = {folder: ImapCursor(
            state.uidvalidity,
            max([state.uidnext, *(u + 1 for _, f, u in plan if f == folder)]),
            state.highestmodseq, format_uid_set(parsed[folder]))
            for folder, state in states.items()}
        yield ResyncPage([], cursor=encode_folder_cursors(cursors))

    def _page(self, client: ImapClient, states: dict[str, FolderState],
              page: list[tuple[datetime, str, int]], parsed: dict[str, set[int]]) -> ResyncPage:
        """One page of the plan, fetched folder by folder, returned in the plan's order."""
        by_folder: dict[str, list[int]] = {}
        for _, folder, uid in page:
            by_folder.setdefault(folder, []).append(uid)
        found: dict[tuple[str, int], MailMessage] = {}
        skipped: list[tuple[str, str]] = []
        for folder, uids in by_folder.items():
            if folder not in states:
                continue
            try:
                messages, rejections, done = client.fetch_messages(
                    folder, states[folder].uidvalidity, uids)
            except MailboxGone:
                if folder == INBOX:
                    raise
                del states[folder]  # deleted during the resync: left out, as in `changes`
                continue
            parsed[folder] |= done
            found.update({(folder, int(m.id.rsplit("/", 1)[1])): m for m in messages})
            skipped += [(r.id, r.reason) for r in rejections]
        return ResyncPage([found[(f, u)] for _, f, u in page if (f, u) in found],
                          skipped=skipped)

    def close(self) -> None:
        pass
