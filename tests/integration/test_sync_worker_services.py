"""Two sync workers on real PostgreSQL (one engine each, advisory locks) and a real JetStream work
queue, with a fake provider: concurrent deliveries for one mailbox sync every message once."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import orjson
import pytest
from sync_fakes import FakeSources, message

from adapters.deliveries.inbox_jetstream import JetStreamInbox
from adapters.deliveries.work_jetstream import JetStreamWork
from adapters.eventstore.mailbox_locks_postgres import PostgresLocks
from domain import events as ev
from runners.bootstrap.config import open_engine
from runners.entrypoints.sync_loop import LoopOptions, run
from runners.services.sync_worker import SyncWorker

pytestmark = pytest.mark.integration

ADDRESS = "mia@acme.test"


async def work(worker: SyncWorker, queue: JetStreamWork, stop: threading.Event) -> None:
    try:
        await run(worker, queue, stop, LoopOptions(poll=0.2, imap_interval=3600))
    finally:
        await queue.close()
        worker.locks.close()


def test_two_workers_share_one_queue_and_lock_each_mailbox(postgres_url: str,
                                                           nats_url: str) -> None:
    setup = open_engine("unused.db", postgres_url)
    setup.follow = False
    report = setup.apply_lines([json.dumps({"tenant": "acme", **x}) for x in [
        {"cmd": "AddUser", "user": "mia", "email": ADDRESS, "role": "member"},
        {"cmd": "ConnectMailbox", "mailbox": "mbx", "user": "mia", "provider": "gmail",
         "address": ADDRESS}]])
    assert not report.rejected
    sources = FakeSources()  # shared by both workers: one provider mailbox
    box = sources.box(ADDRESS)
    box.page_size = 7
    box.add(*(message(i, days_ago=2) for i in range(40)))
    stream, prefix = f"T{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}.hooks"

    async def scenario() -> None:
        inbox = JetStreamInbox(nats_url, stream=stream, subject_prefix=prefix)
        stop = threading.Event()
        engines, tasks, queues = [], [], []
        for _ in range(2):
            engine = open_engine("unused.db", postgres_url)
            engine.follow = False
            engines.append(engine)
            worker = SyncWorker(engine, sources, PostgresLocks(postgres_url), batch_size=5)
            queue = JetStreamWork(nats_url, stream=stream, subject_prefix=prefix, durable="w")
            queues.append(queue)
            tasks.append(asyncio.get_running_loop().run_in_executor(
                None, lambda w=worker, q=queue: asyncio.run(work(w, q, stop))))
        for n in range(20):  # new mail keeps arriving, each with its push
            box.add(message(100 + n, days_ago=0.5))
            await inbox.store("gmail", f"gmail:{n}", orjson.dumps(
                {"delivery_id": f"gmail:{n}", "subscription": "s", "email_address": ADDRESS,
                 "history_id": n}))
        total = len(box.current())
        for _ in range(300):
            synced = [e for _, e in setup.events("acme")
                      if isinstance(e, ev.MessageSynced)]
            state = setup.state("acme")
            if len(synced) >= total and state.mailboxes["mbx"].cursor == str(len(box.history)):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        await inbox.close()
        for engine in engines:
            engine.close()

    asyncio.run(scenario())
    ids = [e.message.id for _, e in setup.events("acme")
           if isinstance(e, ev.MessageSynced)]
    assert len(ids) == len(set(ids)) == 60  # every message once (S14), none lost
    assert setup.state("acme").mailboxes["mbx"].cursor == str(len(box.history))
    setup.close()
