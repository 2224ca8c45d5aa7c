"""Prometheus metrics (issue #14): the counters and histograms every process moves, the gauges
read from the stores at scrape time, HTTP request durations by route template, and the text
exposition. `docs/operations.md` documents each metric.

Counters count in the process that did the thing; Prometheus sums them over processes
(`sum by (type) (rate(...))`). Label values come from code (event and command class names,
providers, outcomes, route templates), never from caller input, so cardinality stays bounded.

Several receiver processes on one port (`run webhooks --workers N`) share
PROMETHEUS_MULTIPROC_DIR: each writes its own files there and any of them (or the parent's
metrics port) exposes the sum (`registry(multiproc_dir)`). prometheus_client reads that
variable itself, at import, to keep values in files; the directory to sum is handed in by the
entrypoint (runners.entrypoints.health), as every setting is: adapters do not read the
environment.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

EVENTS_APPENDED = Counter("crmsync_events_appended", "Events appended to the log, by type",
                          ["type"])
COMMANDS_REJECTED = Counter(
    "crmsync_commands_rejected", "Commands rejected, by command and reason (the refused field)",
    ["cmd", "reason"])
WEBHOOK_DELIVERIES = Counter(
    "crmsync_webhook_deliveries",
    "Webhook deliveries by provider and outcome (accepted, duplicate, refused, malformed, "
    "unavailable)", ["provider", "outcome"])
SYNC_BATCHES = Counter("crmsync_sync_batches",
                       "Sync deliveries handled, by provider and outcome "
                       "(done, retry, dead, outage)", ["provider", "outcome"])
SYNC_BATCH_SECONDS = Histogram(
    "crmsync_sync_batch_seconds", "Time to handle one sync delivery, by provider", ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PROVIDER_ERRORS = Counter("crmsync_provider_errors",
                          "Failures talking to a provider, by provider and kind (error class)",
                          ["provider", "kind"])
PROVIDER_THROTTLED = Counter("crmsync_provider_throttled",
                             "Provider answers asking to slow down (429, Retry-After)",
                             ["provider"])
DEAD_LETTERS = Counter("crmsync_dead_letters", "Work items dead-lettered, by runner",
                       ["runner"])
HTTP_SECONDS = Histogram(
    "crmsync_http_request_duration_seconds",
    "HTTP request duration by method, route template and status", ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

PROVIDERS = frozenset({"gmail", "graph", "imap"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def appended(events: Iterable[object]) -> None:
    # one labelled increment per type, not per event (a sync batch is mostly one type)
    for name, count in collections.Counter(type(e).__name__ for e in events).items():
        EVENTS_APPENDED.labels(name).inc(count)


@functools.cache
def _vocabulary() -> tuple[frozenset[str], frozenset[str]]:
    """The domain's command names and command fields (imported late: adapters below domain)."""
    from domain.commands import COMMANDS

    fields = {f for cls in COMMANDS.values() for f in cls.model_fields}
    return frozenset(COMMANDS), frozenset(fields | {"cmd", "tenant", "json", "line"})


def rejected(cmd: str, field: str) -> None:
    """A rejected command: a name or field that is not the domain's own (caller input) is
    counted as "other"."""
    commands, fields = _vocabulary()
    COMMANDS_REJECTED.labels(cmd if cmd in commands else "other",
                             field if field in fields else "other").inc()


def batch_rejections(events: Iterable[object]) -> None:
    """The CommandRejected events of a sync batch, once it was appended."""
    from domain.events import CommandRejected

    for event in events:
        if isinstance(event, CommandRejected):
            rejected(event.cmd, event.field)


def webhook(provider: str, outcome: str, count: int = 1) -> None:
    if count:
        WEBHOOK_DELIVERIES.labels(provider, outcome).inc(count)


def sync_batch(provider: str, outcome: str, seconds: float) -> None:
    SYNC_BATCHES.labels(provider, outcome).inc()
    SYNC_BATCH_SECONDS.labels(provider).observe(seconds)


def provider_failed(provider: str, exc: BaseException) -> None:
    """A provider's failure (ProviderError; anything else is not the provider's): throttling
    counted apart, everything else by its class."""
    from adapters.errors import ProviderError, ProviderThrottled

    if not isinstance(exc, ProviderError):
        return
    if exc.provider in PROVIDERS:
        provider = exc.provider
    provider = provider if provider in PROVIDERS else "other"
    if isinstance(exc, ProviderThrottled):
        PROVIDER_THROTTLED.labels(provider).inc()
    else:
        PROVIDER_ERRORS.labels(provider, type(exc).__name__).inc()


def dead_letter(runner: str) -> None:
    DEAD_LETTERS.labels(runner).inc()


# -- gauges read at scrape time ------------------------------------------------------------------
class StoreView(Protocol):
    """What the store collector reads: the log's head, the views' positions, mailbox states."""

    def head(self) -> int: ...

    def positions(self) -> Mapping[str, int]: ...

    def mailbox_states(self) -> Mapping[tuple[str, bool], int] | None: ...


class StoreCollector(Collector):
    """Projection lag (events) and position per projection, the log's head, mailboxes by state
    and whether the store answered: read when scraped, so every process that can reach the
    store reports the same figures (take `max by (projection)` over processes)."""

    def __init__(self, view: Callable[[], StoreView | None],
                 names: Sequence[str] | None = None) -> None:
        self.view, self.names = view, names

    def describe(self) -> list[Metric]:
        """Nothing: registering must not read the store (it may be down at start)."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("crmsync_store_up", "1 when the event and view stores answered "
                               "this scrape")
        try:
            view = self.view()
            if view is None:
                raise ConnectionError("store not opened yet")
            head = view.head()
            positions = view.positions()
            states = view.mailbox_states()
        except Exception:  # a scrape never fails: the store being down is a figure too
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("crmsync_log_head_position", "Position of the newest event in "
                                "the log", value=head)
        lag = GaugeMetricFamily("crmsync_projection_lag_events", "Events in the log a "
                                "projection has not applied yet", labels=["projection"])
        pos = GaugeMetricFamily("crmsync_projection_position", "The projection's tracking "
                                "position", labels=["projection"])
        for name, at in sorted(positions.items()):
            if self.names is None or name in self.names:
                lag.add_metric([name], max(0, head - at))
                pos.add_metric([name], at)
        yield lag
        yield pos
        if states is not None:
            boxes = GaugeMetricFamily("crmsync_mailboxes", "Mailboxes by state (connected, "
                                      "disconnected, gone) and suspect (L5)",
                                      labels=["state", "suspect"])
            for (state, suspect), count in sorted(states.items()):
                boxes.add_metric([state, "true" if suspect else "false"], count)
            yield boxes


def count_states(docs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, bool], int]:
    """Mailboxes by (status, suspect) from sync status rows."""
    out: dict[tuple[str, bool], int] = {}
    for doc in docs:
        status = doc.get("status")
        key = (status if isinstance(status, str) else "unknown", bool(doc.get("suspect")))
        out[key] = out.get(key, 0) + 1
    return out


# -- exposition ----------------------------------------------------------------------------------
def registry(multiproc_dir: str | None = None) -> CollectorRegistry:
    """The registry to expose: this process's, or the sum over every process writing to
    `multiproc_dir` (PROMETHEUS_MULTIPROC_DIR)."""
    if not multiproc_dir:
        return REGISTRY
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged, multiproc_dir)  # type: ignore[no-untyped-call]
    for collector in list(_collectors):  # the store gauges: read, not summed
        merged.register(collector)
    return merged


_collectors: list[Collector] = []


def register(collector: Collector) -> Callable[[], None]:
    """Add a collector to what this process exposes; returns its removal."""
    REGISTRY.register(collector)
    _collectors.append(collector)

    def remove() -> None:
        REGISTRY.unregister(collector)
        _collectors.remove(collector)

    return remove


def exposition(source: CollectorRegistry | None = None, multiproc_dir: str | None = None
               ) -> tuple[bytes, str]:
    return generate_latest(source or registry(multiproc_dir)), CONTENT_TYPE_LATEST


def http_request(method: str, route: object, status: int, seconds: float) -> None:
    """One HTTP request's duration (adapters.http.request_timing) under its route template
    (`/v1/threads/{thread}`), never the raw path; unmatched paths share one label."""
    HTTP_SECONDS.labels(method if method in _METHODS else "other",
                        route if isinstance(route, str) else "unmatched",
                        str(status)).observe(seconds)
