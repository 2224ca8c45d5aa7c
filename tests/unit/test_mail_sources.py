"""ProviderSource's resync order over a hand-written ProviderClient (S2, L3, L4): Gmail's start
cursor before the backfill, Graph's delta round drained after it, deletions never reported."""

from __future__ import annotations

from datetime import datetime, timedelta

from sync_fakes import NOW, message

from adapters.providers.client import BackfillPage, ChangePage
from adapters.providers.sources import ProviderSource
from domain.events import MailMessage


class ScriptedClient:
    """changes_since(None) starts a round of `rounds` pages; backfill gives `pages` in order."""

    def __init__(self, rounds: list[ChangePage], pages: list[list[MailMessage]]) -> None:
        self.rounds, self.pages, self.calls = rounds, pages, []  # type: ignore[var-annotated]

    def changes_since(self, mailbox_address: str, cursor: str | None) -> ChangePage:
        self.calls.append(("changes", cursor))
        index = 0 if cursor is None else int(cursor.removeprefix("p"))
        return self.rounds[index]

    def backfill(self, mailbox_address: str, since: datetime,
                 page_token: str | None = None) -> BackfillPage:
        self.calls.append(("backfill", page_token))
        index = int(page_token or 0)
        more = index + 1 < len(self.pages)
        return BackfillPage(messages=self.pages[index],
                            next_page_token=str(index + 1) if more else None)

    def fetch_message(self, mailbox_address: str, message_id: str) -> MailMessage | None:
        return None

    def close(self) -> None:
        pass


SINCE = NOW - timedelta(days=30)


def test_s2_gmail_takes_its_start_cursor_before_the_backfill() -> None:
    client = ScriptedClient([ChangePage(messages=[], deleted_ids=[], new_cursor="900",
                                        more=False)],
                            [[message(3, days_ago=1)], [message(2, days_ago=2)]])
    pages = list(ProviderSource(client, cursor_first=True).resync("a@x", SINCE))
    assert client.calls[0] == ("changes", None)
    assert [[m.id for m in p.messages] for p in pages] == [["m3"], ["m2"], []]
    assert [p.cursor for p in pages] == [None, None, "900"]


def test_l3_graph_drains_a_delta_round_after_the_backfill_inside_the_window_only() -> None:
    rounds = [ChangePage(messages=[message(1, days_ago=40), message(4, days_ago=1)],
                         deleted_ids=["gone-1"], new_cursor="p1", more=True),
              ChangePage(messages=[message(5, days_ago=0.1)], deleted_ids=[],
                         new_cursor="https://delta/final", more=False)]
    client = ScriptedClient(rounds, [[message(4, days_ago=1)]])
    pages = list(ProviderSource(client, cursor_first=False).resync("a@x", SINCE))
    assert client.calls[0] == ("backfill", None)
    ids = [[m.id for m in p.messages] for p in pages]
    assert ids == [["m4"], ["m4"], ["m5"], []]  # m1 is older than the window
    assert pages[-1].cursor == "https://delta/final"
    assert all(not hasattr(p, "deleted_ids") for p in pages)  # a resync never deletes (L4)
