"""Export of a tenant's history (SPEC §7): its events in order as JSON Lines, for auditors.

Each line: `type`, `position` (the event's place in the tenant's own stream: positions handed
out say nothing about other tenants, §8), `occurred_at`, `actor`, `correlation_id`,
`command_id` and `payload` (the event's own fields). Content (L2: subjects, bodies, snippets,
attachment names) only when asked for; `strip_content` is the one place that decides what
content is, so erasure can extend it. Streams page by page: constant memory on any history.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from adapters.eventstore.scan import scan_tenant
from domain.events import ERASED, DomainEvent

if TYPE_CHECKING:
    from runners.services.engine import Engine

CONTENT_FIELDS = frozenset({"subject", "body", "snippet", "snippets"})
_META = ("tenant", "actor", "occurred_at", "correlation_id", "command_id")


def strip_content(value: Any) -> Any:
    """The payload without content: content fields become null, attachments keep only their
    size and type (their names are content), AttachmentRejected's attachment name likewise."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in CONTENT_FIELDS:
                out[key] = None
            elif key == "attachments" and isinstance(item, list):
                out[key] = [{**a, "name": None} if isinstance(a, dict) else a for a in item]
            elif key == "refused" and isinstance(item, list):  # S8's refused: names are content
                out[key] = [{**a, "name": None, "reason": None} if isinstance(a, dict) else a
                            for a in item]
            else:
                out[key] = strip_content(item)
        return out
    if isinstance(value, list):
        return [strip_content(v) for v in value]
    return value


def without_erased(value: Any) -> tuple[Any, bool]:
    """The payload with erased content (L2: its key was destroyed) as null, and whether any was."""
    if value == ERASED or (isinstance(value, str) and ERASED in value):
        return None, True
    if isinstance(value, dict):
        found = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[key], erased = without_erased(item)
            found = found or erased
        return out, found
    if isinstance(value, list):
        items = [without_erased(v) for v in value]
        return [v for v, _ in items], any(e for _, e in items)
    return value, False


def event_line(seq: int, event: DomainEvent, with_content: bool) -> dict[str, Any]:
    payload = event.model_dump(mode="json", by_alias=True, exclude=set(_META))
    kind = type(event).__name__
    payload, erased = without_erased(payload)  # never the store's marker, with content or not
    if erased:
        payload["erased"] = True
    if not with_content:
        payload = strip_content(payload)
        if kind == "AttachmentRejected":  # the name is content, also where the reason says it
            name = payload["attachment"]
            if name and isinstance(payload.get("reason"), str):
                payload["reason"] = payload["reason"].replace(name, "(name withheld)")
            payload["attachment"] = None
    return {"type": kind, "position": seq, "occurred_at": event.occurred_at.isoformat(),
            "actor": event.actor, "correlation_id": event.correlation_id,
            "command_id": event.command_id, "payload": payload}


def export_lines(engine: Engine, tenant: str, since: datetime | None = None,
                 until: datetime | None = None, with_content: bool = False) -> Iterator[bytes]:
    """The tenant's events with `since` <= occurred_at <= `until`, one JSON line each (with the
    newline), in stream order. Domain time runs forward per tenant (E6): the first event past
    `until` ends the export."""
    for seq, event in scan_tenant(engine.stores().events, tenant):
        if since is not None and event.occurred_at < since:
            continue
        if until is not None and event.occurred_at > until:
            return
        yield orjson.dumps(event_line(seq, event, with_content)) + b"\n"
