"""E8 on the real stores: an event of tenant A that cannot be projected (a NUL in a record id,
stored by an older version; an event the fold cannot apply) sticks A alone. B keeps projecting,
`lag` names A, rebuild and verify go on, a restart retries A. And an id nothing can store
answers 404 over HTTP, never 503."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from loopback import Server
from stuck_fixtures import inject, lead, lead_event, records, setup_tenant, unfoldable

from adapters.http.api import create_app
from adapters.http.tokens import issue
from projections.projector import Projector
from projections.rows import PROJECTIONS
from runners.bootstrap.config import open_engine
from runners.entrypoints.projection_runner import lag
from runners.services.engine import Engine

pytestmark = pytest.mark.integration
SECRET = b"test-secret-0123456789abcdef"


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL or SQLite path that `open_engine` opens (again, for a restart)."""
    if request.param == "sqlite":
        yield str(tmp_path / "crmsync.db")
    else:
        yield request.getfixturevalue("postgres_url")


def open_at(where: str) -> Engine:
    return open_engine(where, where if where.startswith("postgresql") else None)


def stuck_tenants(engine: Engine) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for name, shown in lag(engine).items():
        assert name in PROJECTIONS
        for mark in shown["stuck"]:
            out.setdefault(mark["tenant"], set()).add(mark["position"])
    return out


def test_e8_nul_in_a_stored_record_id_sticks_only_its_tenant(opener: str) -> None:
    engine = open_at(opener)
    try:
        setup_tenant(engine, "a", "lead-a1")
        setup_tenant(engine, "b", "lead-b1")
        bad = inject(engine, "a", lead_event("a", "x\x00y"), lead_event("a", "lead-a2"))
        lead(engine, "b", "lead-b2")  # catches the views up past A's bad event
        assert records(engine, "b") == {"lead-b1", "lead-b2"}
        assert records(engine, "a") == {"lead-a1"}
        assert stuck_tenants(engine) == {"a": {bad}}
        head = engine.head()
        assert all(v["position"] == head for v in lag(engine).values())
        engine.rebuild()  # does not die on it, and finds the same
        assert stuck_tenants(engine) == {"a": {bad}}
        engine.rebuild(parts=2)  # PostgreSQL's default: with a stuck tenant, one process
        assert stuck_tenants(engine) == {"a": {bad}}
        assert records(engine, "a") == {"lead-a1"}
        assert records(engine, "b") == {"lead-b1", "lead-b2"}
        sums = engine.verify()
        assert all(live == rebuilt for live, rebuilt in sums.values())
    finally:
        engine.close()
    again = open_at(opener)  # a restart retries A: still failing, still stuck, B goes on
    try:
        lead(again, "b", "lead-b3")
        assert records(again, "b") == {"lead-b1", "lead-b2", "lead-b3"}
        assert stuck_tenants(again) == {"a": {bad}}
    finally:
        again.close()


def test_e8_an_event_the_fold_cannot_apply_sticks_only_its_tenant(opener: str) -> None:
    engine = open_at(opener)
    try:
        setup_tenant(engine, "a", "lead-a1")
        setup_tenant(engine, "b", "lead-b1")
        bad = inject(engine, "a", unfoldable("a"), lead_event("a", "lead-a2"))
        lead(engine, "b", "lead-b2")
        assert records(engine, "b") == {"lead-b1", "lead-b2"}
        assert records(engine, "a") == {"lead-a1"}
        assert stuck_tenants(engine) == {"a": {bad}}
        engine.projector = Projector()  # restart: retried, fails at the same event
        lead(engine, "b", "lead-b3")
        assert stuck_tenants(engine) == {"a": {bad}}
        assert records(engine, "b") == {"lead-b1", "lead-b2", "lead-b3"}
    finally:
        engine.close()


def test_e8_path_ids_nothing_can_store_answer_404_on_postgres(postgres_url: str) -> None:
    engine = open_at(postgres_url)
    try:
        setup_tenant(engine, "a", "lead-a1")
        app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
        auth = {"authorization": f"Bearer {issue(SECRET, 'a', 'ada', False)}"}
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            for path in ("/v1/threads/a%00b", "/v1/threads/a%00b/explain",
                         "/v1/records/x%00y/timeline", "/v1/mailboxes/m%01b/status",
                         "/v1/contacts/c%00/merge", "/v1/threads/" + "t" * 5000):
                answer = client.get(path, headers=auth)
                assert (answer.status_code, answer.json()) == (404, {"detail": "not found"}), path
            assert client.get("/v1/mailbox?label=a%00b", headers=auth).json() == []
            timeline = client.get("/v1/records/lead-a1/timeline", headers=auth)
            assert timeline.status_code == 200
            posted = client.post("/v1/commands", headers={
                **auth, "content-type": "application/json"}, content=json.dumps({
                "tenant": "a", "cmd": "CreateLead", "record": "x\x00y", "owner": "ada",
                "name": "L", "emails": []}))
            # a single rejected command is a 422 naming the field (§8)
            assert posted.status_code == 422, posted.text
            assert "record" in posted.json()["detail"]
            assert "contains NUL (U+0000)" in posted.json()["detail"]
    finally:
        engine.close()
