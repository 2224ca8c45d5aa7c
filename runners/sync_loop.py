"""The sync worker's loop (`crmsync run sync`): deliveries from the work queue, handled, retried
with backoff or dead-lettered; the catch-up, IMAP polls and push-channel ticks between them."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import structlog

from adapters.errors import CredentialsRejected, MalformedWebhook, ProviderThrottled
from adapters.work_queue import Delivery, WorkQueue
from runners.sync_worker import SyncWorker, describe

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


def retry_delay(attempts: int, options: LoopOptions) -> float:
    return float(min(options.max_backoff, options.backoff * 2 ** max(0, attempts - 1)))


async def process(worker: SyncWorker, queue: WorkQueue, delivery: Delivery,
                  options: LoopOptions) -> str:
    """One delivery: handled and acked; or retried later; or dead-lettered (recorded, acked)."""
    log.info("delivery_started", delivery_id=delivery.delivery_id, provider=delivery.provider,
             attempts=delivery.attempts)
    try:
        outcome = worker.handle(delivery)
    except Exception as exc:
        error = describe(exc)
        # unreadable input, and credentials only a reconnection can fix: no retries
        permanent = isinstance(exc, MalformedWebhook | CredentialsRejected)
        if not permanent and delivery.attempts < options.max_attempts:
            delay = retry_delay(delivery.attempts, options)
            if isinstance(exc, ProviderThrottled):  # the provider said how long to wait
                delay = max(delay, min(exc.retry_after, options.max_backoff))
            log.warning("delivery_retry", delivery_id=delivery.delivery_id,
                        attempts=delivery.attempts, delay=delay, error=error)
            await queue.retry(delivery, delay)
            return "retry"
        ref = worker.route_of(delivery)
        dead_id = await queue.put_dead_letter(
            delivery, tenant=ref.tenant if ref else None, mailbox=ref.mailbox if ref else None,
            error=error)
        recorded = worker.record_dead_letter(delivery, dead_id, error)
        log.error("delivery_dead_lettered", delivery_id=delivery.delivery_id,
                  dead_letter_id=dead_id, attempts=delivery.attempts, error=error,
                  recorded=recorded)
        await queue.ack(delivery)
        return "dead"
    log.info("delivery_done", delivery_id=delivery.delivery_id, events=outcome.events,
             synced=outcome.synced, skipped=outcome.skipped_delivery, note=outcome.note,
             resynced=outcome.resynced, gone=outcome.gone)
    await queue.ack(delivery)
    return "done"


async def run(worker: SyncWorker, queue: WorkQueue, stop: threading.Event,
              options: LoopOptions | None = None) -> None:
    options = options or LoopOptions()
    last_poll = last_push = float("-inf")
    log.info("sync_worker_started", imap_interval=options.imap_interval,
             push_providers=worker.push.providers if worker.push else [],
             public_url=worker.push.public_url if worker.push else None)
    while not stop.is_set():
        try:
            worker.catch_up()
            if time.monotonic() - last_poll >= options.imap_interval:
                worker.poll("imap")
                last_poll = time.monotonic()
            if worker.push is not None and \
                    time.monotonic() - last_push >= options.push_interval:
                worker.maintain_push()
                last_push = time.monotonic()
            for delivery in await queue.fetch(options.fetch, options.poll):
                await process(worker, queue, delivery, options)
                if stop.is_set():
                    break
        except Exception as exc:  # a store or queue outage: log, wait, go on
            # Deliveries not acked come again; the cursor in the log says where sync stands.
            log.error("sync_loop_failed", error=describe(exc))
            await asyncio.sleep(options.poll)
    log.info("sync_worker_stopped")


def run_until_signalled(worker: SyncWorker, queue: WorkQueue,
                        options: LoopOptions | None = None) -> None:
    """Run until SIGTERM or SIGINT; the delivery in hand finishes first."""
    import signal

    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

    async def main() -> None:
        try:
            await run(worker, queue, stop, options)
        finally:
            await queue.close()

    asyncio.run(main())
