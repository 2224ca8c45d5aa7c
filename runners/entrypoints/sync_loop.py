"""The sync worker's loop (`crmsync run sync`): deliveries from the work queue, handled, retried
with backoff or dead-lettered; the catch-up, IMAP polls and push-channel ticks between them.

Outages (PostgreSQL or NATS down, issue #10 point 10) never wait out the queue's ack wait: a
delivery that failed on the store is given back at once with a delay (JetStream NAK) and never
dead-lettered for it; an ack or NAK that could not be sent is owed and sent as soon as the
queue answers again, and the rest of a fetched batch is handled meanwhile, or given back when
the loop itself failed. The loop backs off (capped, with jitter) while the outage lasts."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import structlog

from adapters.deliveries.work_queue import Delivery, WorkQueue
from adapters.errors import (
    ConcurrencyConflict,
    CredentialsRejected,
    DeliveryStoreError,
    MalformedWebhook,
    ProviderThrottled,
    StoreError,
)
from adapters.metrics import prometheus as metrics
from runners.services.affinity import Affinity
from runners.services.backoff import Backoff
from runners.services.follower import run_until_signalled
from runners.services.sync_common import describe
from runners.services.sync_worker import SyncWorker

log = structlog.get_logger("crmsync.sync")


@dataclass
class LoopOptions:
    fetch: int = 20
    poll: float = 1.0  # seconds to wait for deliveries before looking at the log again
    imap_interval: float = 60.0
    push_interval: float = 300.0  # seconds between push-channel ticks (create, renew)
    max_attempts: int = 5
    backoff: float = 2.0  # retry n waits backoff * 2^(n-1) seconds, at most max_backoff
    max_backoff: float = 300.0
    outage_delay: float = 2.0  # a delivery given back during an outage comes again after this


# Settling a delivery: ("ack", 0) once its events are durable, ("retry", delay) to give it back.
Settle = tuple[Delivery, str, float]


class Owed:
    """Acks and NAKs the queue could not take (NATS down): sent again before anything else, so
    a delivery a worker held when NATS restarted is acked or redelivered as soon as NATS is
    back, not after the ack wait."""

    MAX_TRIES = 20  # then the queue's own redelivery (ack wait, lease) takes over (E5)

    def __init__(self) -> None:
        self.items: list[Settle] = []
        self.tries = 0  # failed tries of the first item

    async def settle(self, queue: WorkQueue, delivery: Delivery, how: str,
                     delay: float = 0.0) -> bool:
        """Ack or give back `delivery` now; owed (False) when the queue fails."""
        try:
            if how == "ack":
                await queue.ack(delivery)
            else:
                await queue.retry(delivery, delay)
        except DeliveryStoreError as exc:
            log.warning("delivery_settle_owed", delivery_id=delivery.delivery_id, how=how,
                        error=describe(exc))
            self.items.append((delivery, how, delay))
            return False
        return True

    async def pay(self, queue: WorkQueue) -> None:
        """Send what is owed, in order; raises DeliveryStoreError (keeping the rest) while the
        queue is still down."""
        while self.items:
            delivery, how, delay = self.items[0]
            try:
                if how == "ack":
                    await queue.ack(delivery)
                else:
                    await queue.retry(delivery, delay)
            except DeliveryStoreError:
                self.tries += 1
                if self.tries < self.MAX_TRIES:
                    raise
                # one delivery the queue keeps refusing must not stop the worker for good
                log.warning("delivery_settle_dropped", delivery_id=delivery.delivery_id,
                            how=how, tries=self.tries)
            else:
                log.info("delivery_settled_late", delivery_id=delivery.delivery_id, how=how)
            self.items.pop(0)
            self.tries = 0


def outage(exc: BaseException) -> bool:
    """A store or queue failure (not the delivery's fault): give the delivery back, no attempt
    counted towards dead-lettering. A concurrency conflict the engine could not resolve is not
    an outage."""
    return isinstance(exc, StoreError | DeliveryStoreError) and \
        not isinstance(exc, ConcurrencyConflict)


def retry_delay(attempts: int, options: LoopOptions) -> float:
    return float(min(options.max_backoff, options.backoff * 2 ** max(0, attempts - 1)))


async def process(worker: SyncWorker, queue: WorkQueue, delivery: Delivery,
                  options: LoopOptions, owed: Owed | None = None) -> str:
    """`handle` timed and counted by outcome (adapters.metrics.prometheus)."""
    started = time.monotonic()
    outcome = await handle(worker, queue, delivery, options, owed)
    metrics.sync_batch(delivery.provider, outcome, time.monotonic() - started)
    return outcome


async def handle(worker: SyncWorker, queue: WorkQueue, delivery: Delivery,
                 options: LoopOptions, owed: Owed | None = None) -> str:
    """One delivery: handled and acked; or retried later; or dead-lettered (recorded, acked);
    or, on a store outage, given back at once ("outage"). An ack or NAK the queue cannot take
    goes to `owed` (raised as DeliveryStoreError without one)."""
    log.info("delivery_started", delivery_id=delivery.delivery_id, provider=delivery.provider,
             attempts=delivery.attempts)
    try:
        outcome = worker.handle(delivery)
    except Exception as exc:
        error = describe(exc)
        # unreadable input, and credentials only a reconnection can fix: no retries
        permanent = isinstance(exc, MalformedWebhook | CredentialsRejected)
        metrics.provider_failed(delivery.provider, exc)
        if outage(exc):
            log.warning("delivery_given_back", delivery_id=delivery.delivery_id,
                        attempts=delivery.attempts, delay=options.outage_delay, error=error)
            await _settle(queue, owed, delivery, "retry", options.outage_delay)
            return "outage"
        if not permanent and delivery.attempts < options.max_attempts:
            delay = retry_delay(delivery.attempts, options)
            if isinstance(exc, ProviderThrottled):  # the provider said how long to wait
                delay = max(delay, min(exc.retry_after, options.max_backoff))
            log.warning("delivery_retry", delivery_id=delivery.delivery_id,
                        attempts=delivery.attempts, delay=delay, error=error)
            await _settle(queue, owed, delivery, "retry", delay)
            return "retry"
        ref = worker.route_of(delivery)
        dead_id = await queue.put_dead_letter(
            delivery, tenant=ref.tenant if ref else None, mailbox=ref.mailbox if ref else None,
            error=error)
        recorded = worker.record_dead_letter(delivery, dead_id, error)
        metrics.dead_letter("sync")
        log.error("delivery_dead_lettered", delivery_id=delivery.delivery_id,
                  dead_letter_id=dead_id, attempts=delivery.attempts, error=error,
                  recorded=recorded)
        await _settle(queue, owed, delivery, "ack")
        return "dead"
    log.info("delivery_done", delivery_id=delivery.delivery_id, events=outcome.events,
             synced=outcome.synced, skipped=outcome.skipped_delivery, note=outcome.note,
             resynced=outcome.resynced, gone=outcome.gone)
    await _settle(queue, owed, delivery, "ack")
    return "done"


async def _settle(queue: WorkQueue, owed: Owed | None, delivery: Delivery, how: str,
                  delay: float = 0.0) -> None:
    if owed is None:
        await (queue.ack(delivery) if how == "ack" else queue.retry(delivery, delay))
    else:
        await owed.settle(queue, delivery, how, delay)


async def run(worker: SyncWorker, queue: WorkQueue, stop: threading.Event,
              options: LoopOptions | None = None, backoff: Backoff | None = None,
              affinity: Affinity | None = None) -> None:
    """With `affinity` (tenant partitions, issue #15) `queue` is its partitioned queue: the
    loop forwards incoming deliveries to their tenant's partition and handles its own."""
    options = options or LoopOptions()
    backoff = backoff or Backoff(base=options.poll)
    owed = Owed()
    last_poll = last_push = float("-inf")
    log.info("sync_worker_started", imap_interval=options.imap_interval,
             push_providers=worker.push.providers if worker.push else [],
             public_url=worker.push.public_url if worker.push else None)
    while not stop.is_set():
        batch: list[Delivery] = []
        done = 0
        try:
            await owed.pay(queue)
            wait = options.poll
            if affinity is not None:
                affinity.rebalance()
                # half the poll each for incoming and own deliveries: idle, a pass still
                # takes one poll; busy, neither waits
                wait = 0.0 if await affinity.route(options.fetch, options.poll / 2) \
                    else options.poll / 2
            worker.catch_up()
            if time.monotonic() - last_poll >= options.imap_interval:
                worker.poll("imap")
                last_poll = time.monotonic()
            if worker.push is not None and \
                    time.monotonic() - last_push >= options.push_interval:
                worker.maintain_push()
                last_push = time.monotonic()
            batch = await queue.fetch(options.fetch, wait)
            for delivery in batch:
                if stop.is_set():
                    break
                await process(worker, queue, delivery, options, owed)
                done += 1
            backoff.reset()
        except Exception as exc:  # a store or queue outage: log, back off, go on
            # The cursor in the log says where sync stands; what was fetched and not handled
            # goes back to the queue now (or as soon as it answers), not after the ack wait.
            for delivery in batch[done:]:
                await owed.settle(queue, delivery, "retry", 0.0)
            delay = backoff.next_delay()
            log.error("sync_loop_failed", error=describe(exc), failures=backoff.failures,
                      retry_in=round(delay, 3))
            await pause(delay, stop)
            continue
        for delivery in batch[done:]:  # stopping: the rest goes back for the other workers
            await owed.settle(queue, delivery, "retry", 0.0)
    try:
        await owed.pay(queue)
    except DeliveryStoreError as exc:
        log.warning("sync_worker_stopped_owing", owed=len(owed.items), error=describe(exc))
    if affinity is not None:
        affinity.leave()
    log.info("sync_worker_stopped")


async def pause(seconds: float, stop: threading.Event) -> None:
    """Sleep `seconds`, ending early when `stop` is set (SIGTERM during a backoff)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.2, left))


def run_process(worker: SyncWorker, queue: WorkQueue, options: LoopOptions | None = None,
                affinity: Affinity | None = None) -> None:
    """`run` until SIGTERM or SIGINT (the delivery in hand finishes first), then close the
    queue."""
    stop = threading.Event()

    async def main() -> None:
        try:
            await run(worker, queue, stop, options, affinity=affinity)
        finally:
            await queue.close()

    run_until_signalled(stop, lambda: asyncio.run(main()))
