"""Two tenants and a way to store an event no command could produce (E8 tests): data written by
an older version, or by a bug, bypassing validation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from domain import events as ev
from runners.services.engine import Engine

AT = datetime(2026, 1, 5, tzinfo=UTC)


def setup_tenant(engine: Engine, tenant: str, lead: str) -> None:
    lines: list[dict[str, Any]] = [
        {"cmd": "AddUser", "user": "ada", "email": f"ada@{tenant}.test", "role": "admin"},
        {"cmd": "CreateLead", "record": lead, "owner": "ada", "name": "Lead",
         "emails": [f"{lead}@x.test"]},
    ]
    report = engine.apply_lines([json.dumps({"tenant": tenant, **x}) for x in lines])
    assert not report.rejected, report.rejected


def lead(engine: Engine, tenant: str, record: str) -> None:
    report = engine.apply_lines([json.dumps({
        "tenant": tenant, "cmd": "CreateLead", "record": record, "owner": "ada", "name": "L",
        "emails": [f"{record}@x.test"]})])
    assert not report.rejected, report.rejected


def lead_event(tenant: str, record: str) -> ev.LeadCreated:
    return ev.LeadCreated(tenant=tenant, actor="ada", occurred_at=AT, correlation_id="old",
                          record=record, owner="ada", name="L", emails=[])


def unfoldable(tenant: str) -> ev.UserDeactivated:
    """An event the fold cannot apply (a user nobody added)."""
    return ev.UserDeactivated(tenant=tenant, actor="ada", occurred_at=AT,
                              correlation_id="old", user="ghost")


def inject(engine: Engine, tenant: str, *events: ev.DomainEvent) -> int:
    """Append `events` to the tenant's stream as they are (not folded, not validated); returns
    the log position of the first."""
    state = engine.state(tenant)
    first = engine.head() + 1
    engine.stores().events.append_folded(state, state.seq, list(events))
    engine.stores().events.forget(tenant)
    return first


def records(engine: Engine, tenant: str) -> set[str]:
    return {r["record"] for r in engine.query_records(tenant, "ada")}
