"""Generate a large, valid tenant history straight into an event store (for benchmarks).

    python -m benchmarks.generate --postgres URL --users 200 --records 50000 --messages 1000000

Events are built directly (not through `decide`) and appended in batches of --batch events per
transaction, the way the sync runners write. The history is deterministic for a given --seed.
One record (`hot-contact`) gets --hot-threads threads of its own, for the owner-change benchmark.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from adapters.eventstore.store import EventStore
from domain import events as ev
from runners.bootstrap.config import open_engine

T0 = datetime(2025, 1, 1, tzinfo=UTC)
LEVELS = ["not_visible", "visible", "visible_if_owner", "visible_if_owner_or_collaborator"]


def history(tenant: str, users: int, records: int, messages: int, hot_threads: int,
            seed: int) -> Iterator[ev.DomainEvent]:
    rng = random.Random(seed)
    clock = [T0]

    def meta() -> dict[str, object]:
        clock[0] += timedelta(milliseconds=10)
        return {"tenant": tenant, "actor": "system:generator", "occurred_at": clock[0],
                "correlation_id": "generate"}

    for i in range(users):
        role = "admin" if i == 0 else "manager" if i < 10 else "member"
        yield ev.UserAdded(**meta(), user=f"u{i}", email=f"u{i}@corp.test", role=role,
                           manager=None if i < 10 else f"u{1 + i % 9}")
        yield ev.MailboxConnected(**meta(), mailbox=f"mb{i}", user=f"u{i}", provider="gmail",
                                  address=f"u{i}@corp.test", scope={"mode": "all"},
                                  backfill_days=30, credentials_set=False)
        for record_type in ("lead", "contact", "deal"):
            yield ev.GlobalVisibilitySet(**meta(), user=f"u{i}", record_type=record_type,
                                         level=rng.choice(LEVELS))
    contacts: list[str] = []
    for r in range(records):
        owner = f"u{rng.randrange(users)}"
        kind = r % 5
        if kind in (0, 1):
            yield ev.LeadCreated(**meta(), record=f"lead-{r}", owner=owner, name=f"Lead {r}",
                                 emails=[f"p{r}@ext{r % 97}.test"])
        elif kind in (2, 3) or not contacts:
            contacts.append(f"contact-{r}")
            yield ev.ContactCreated(**meta(), record=f"contact-{r}", owner=owner,
                                    name=f"Contact {r}", kind="person",
                                    emails=[f"p{r}@ext{r % 97}.test"])
        else:
            yield ev.DealCreated(**meta(), record=f"deal-{r}", owner=owner, name=f"Deal {r}",
                                 contacts=[rng.choice(contacts)], stage="open")
    if hot_threads:
        yield ev.ContactCreated(**meta(), record="hot-contact", owner="u11", name="Hot",
                                kind="person", emails=["hot@ext.test"])
    addresses = [f"p{r}@ext{r % 97}.test" for r in range(records) if r % 5 != 4]
    body = "x" * 200
    sent = T0
    for m in range(messages):
        hot = m < hot_threads * 2
        thread = f"hot{m // 2}" if hot else f"t{m // 4}"
        user = 11 if hot else (m // 4) % users  # one mailbox for all messages of a thread
        other = "hot@ext.test" if hot else addresses[(m // 4) % len(addresses)]
        sent += timedelta(seconds=1)
        msg = ev.MailMessage(id=f"m{m}", message_id=f"<m{m}@ext.test>", thread_id=thread,
                             from_=other if m % 2 else f"u{user}@corp.test",
                             to=[f"u{user}@corp.test" if m % 2 else other], subject=f"S {m // 4}",
                             body=body, sent_at=sent, labels=["INBOX"])
        yield ev.MessageSynced(**meta(), mailbox=f"mb{user}", thread=f"mb{user}:{thread}",
                               message=msg)


def append_all(store: EventStore, tenant: str, events: Iterator[ev.DomainEvent], batch: int
               ) -> int:
    seq = store.state(tenant).seq
    if seq:
        raise SystemExit(f"tenant {tenant!r} already has {seq} events; use another --tenant")
    pending: list[ev.DomainEvent] = []
    for event in events:
        pending.append(event)
        if len(pending) == batch:
            store.append_raw(tenant, seq, pending)  # sealed and chained as the engine does
            seq += len(pending)
            pending = []
    if pending:
        store.append_raw(tenant, seq, pending)
        seq += len(pending)
    return seq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", help="PostgreSQL URL (else $CRMSYNC_POSTGRES_URL, else --db)")
    p.add_argument("--db", default="./bench.db")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--hot-threads", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    engine = open_engine(args.db, args.postgres)
    started = time.perf_counter()
    count = append_all(engine.stores().events, args.tenant,
                       history(args.tenant, args.users, args.records, args.messages,
                               args.hot_threads, args.seed), args.batch)
    elapsed = time.perf_counter() - started
    sys.stdout.write(f"generated {count} events for tenant {args.tenant} in {elapsed:.1f} s "
                     f"({count / elapsed:.0f} events/s appended, {args.batch} per transaction)\n")
    engine.close()


if __name__ == "__main__":
    main()
