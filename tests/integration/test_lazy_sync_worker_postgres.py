"""A sync worker's delivery after a start folds the mailbox it syncs, not the tenant's mail
(issue #15, lazy mailboxes on PostgreSQL): the other mailboxes stay unfolded, what it syncs is
what a whole state syncs (every message once, a re-delivery nothing), and a read that reaches
another mailbox runs the delivery again on the whole state instead of failing it."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import orjson
import pytest
from sync_fakes import FakeSources, message

from adapters.credentials.store import KEY_ENV
from adapters.deliveries.work_queue import Delivery
from adapters.providers.sources import Changes
from domain import commands as c
from domain import events as ev
from domain.lazy_mailboxes import unloaded
from domain.state import TenantState
from runners.bootstrap.config import open_engine
from runners.bootstrap.settings import load_settings
from runners.services.engine import Engine
from runners.services.sync_worker import MailboxRef, SyncWorker

pytestmark = pytest.mark.integration
MIA, LEO = "mia@acme.test", "leo@acme.test"
KEY = base64.b64encode(b"k" * 32).decode()  # the credential store's (mia's mailbox has some)


def engine(url: str, lazy: bool) -> Engine:
    env = {k: v for k, v in os.environ.items() if k.startswith("CRMSYNC_")}
    env.update({"CRMSYNC_SNAPSHOTS": "off", "CRMSYNC_LAZY_MAILBOXES": "on" if lazy else "off",
                KEY_ENV: KEY})
    opened = open_engine("unused.db", url, load_settings(env))
    opened.follow = False
    return opened


def push(address: str, n: int) -> Delivery:
    return Delivery("gmail", f"gmail:{n}", orjson.dumps(
        {"delivery_id": f"gmail:{n}", "subscription": "s", "email_address": address,
         "history_id": n}), 1)


@pytest.fixture
def synced(postgres_url: str) -> Iterator[tuple[FakeSources, list[Engine]]]:
    """Two users' mailboxes synced by a worker on a whole state; then the engines a test opens
    (closed after it)."""
    first = engine(postgres_url, lazy=False)
    opened = [first]
    report = first.apply_lines([json.dumps({"tenant": "acme", **x}) for x in [
        {"cmd": "AddUser", "user": "mia", "email": MIA, "role": "member"},
        {"cmd": "AddUser", "user": "leo", "email": LEO, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mbx-mia", "user": "mia", "provider": "gmail",
         "address": MIA, "credentials": {"access_token": "ya29.t", "refresh_token": "1//r"}},
        {"cmd": "ConnectMailbox", "mailbox": "mbx-leo", "user": "leo", "provider": "gmail",
         "address": LEO}]])
    assert not report.rejected
    sources = FakeSources()
    sources.box(MIA).add(*(message(i) for i in range(3)))
    sources.box(LEO).add(*(message(i) for i in range(10, 14)))
    SyncWorker(first, sources).catch_up()
    try:
        yield sources, opened
    finally:
        for e in opened:
            e.close()


def synced_ids(e: Engine) -> list[tuple[str, str]]:
    return sorted((x.mailbox, x.message.id) for _, x in e.events("acme")
                  if isinstance(x, ev.MessageSynced))


def test_a_delivery_after_a_start_folds_only_the_mailbox_it_syncs(
        postgres_url: str, synced: tuple[FakeSources, list[Engine]]) -> None:
    sources, opened = synced
    lazy = engine(postgres_url, lazy=True)  # a worker process starting
    opened.append(lazy)
    worker = SyncWorker(lazy, sources)
    sources.box(MIA).add(message(3, days_ago=0.5), message(1))  # one new, one known
    assert worker.handle(push(MIA, 1)).synced == 1
    state = lazy.stores().events.state("acme", lazy=True)
    assert unloaded(state) == {"mbx-leo"}  # the other user's mail never folded
    assert worker.handle(push(MIA, 2)).synced == 0  # nothing new: nothing twice (S14)
    sources.box(LEO).add(message(14, days_ago=0.5))
    assert worker.handle(push(LEO, 3)).synced == 1
    assert unloaded(lazy.stores().events.state("acme", lazy=True)) == set()
    assert synced_ids(lazy) == sorted([("mbx-mia", f"m{i}") for i in range(4)]
                                      + [("mbx-leo", f"m{i}") for i in range(10, 15)])
    whole = engine(postgres_url, lazy=False)
    opened.append(whole)
    assert lazy.state("acme") == whole.state("acme")


class ReadsAnotherMailbox(SyncWorker):
    """A worker whose first look at a page's changes also reads another mailbox's message: a
    read the lazy state cannot answer (MailboxNotLoaded)."""

    looked = 0

    def _change_commands(self, state: TenantState, ref: MailboxRef, changes: Changes
                         ) -> list[c.Command]:
        self.looked += 1
        if self.looked == 1:
            state.messages.get(("mbx-leo", "m10"))
        return super()._change_commands(state, ref, changes)


def test_a_delivery_reading_another_mailbox_runs_again_on_the_whole_state(
        postgres_url: str, synced: tuple[FakeSources, list[Engine]]) -> None:
    sources, opened = synced
    lazy = engine(postgres_url, lazy=True)
    opened.append(lazy)
    worker = ReadsAnotherMailbox(lazy, sources)
    sources.box(MIA).add(message(3, days_ago=0.5), message(4, days_ago=0.4))
    assert worker.handle(push(MIA, 1)).synced == 2  # not a failed delivery
    assert worker.looked == 2  # the second time on the whole state
    assert not unloaded(lazy.stores().events.state("acme", lazy=True))  # every one folded
    assert synced_ids(lazy).count(("mbx-mia", "m3")) == 1
    assert len(synced_ids(lazy)) == 9


def test_a_token_refresh_asks_the_log_about_its_mailbox_only(
        postgres_url: str, synced: tuple[FakeSources, list[Engine]]) -> None:
    """A refreshed token is stored only while the log says the mailbox still has credentials;
    that check (every runner's, `Engine.credentials_still_set`) folds the one mailbox."""
    _, opened = synced
    lazy = engine(postgres_url, lazy=True)
    opened.append(lazy)
    assert lazy.credentials_still_set("acme", "mbx-mia")
    assert unloaded(lazy.stores().events.state("acme", lazy=True)) == {"mbx-leo"}
    assert not lazy.credentials_still_set("acme", "mbx-leo")  # connected without any
    assert not lazy.credentials_still_set("acme", "mbx-nobody")
    report = opened[0].apply_lines([json.dumps({"tenant": "acme", "cmd": "DisconnectMailbox",
                                                "mailbox": "mbx-mia"})])
    assert not report.rejected
    assert not lazy.credentials_still_set("acme", "mbx-mia")  # disconnected since
