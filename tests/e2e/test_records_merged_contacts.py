"""Issue #13 point 12 (C9): a merged-away contact is no record of its own in `query records`
and `GET /v1/records`: its survivor stands in its place, the same answer from the CLI (as
processes on a SQLite file) and over HTTP (on the same file)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from contact_story import DUPLICATE, STORY
from loopback import Server
from test_cli import jsonl, query, run

from adapters.http.api import create_app
from adapters.http.tokens import issue
from runners.services.engine import Engine

pytestmark = pytest.mark.e2e
SECRET = b"test-secret-0123456789abcdef"

# c-3 has an address of its own and is merged into c-1 as well; c-1's own addresses are the
# newest (C8), so only c-3 holds old@cust.test. `wide` is an admin's listing with no address.
MORE: list[dict[str, Any]] = [
    {"cmd": "CreateContact", "record": "c-3", "owner": "mia", "name": "Carla (old)",
     "kind": "person", "emails": ["old@cust.test"]},
    {"cmd": "UpdateContact", "record": "c-1", "fields": {"emails": ["carla@cust.test"]}},
    {"cmd": "MergeContacts", "survivor": "c-1", "merged": ["c-3"]},
]
BEFORE_MERGES = "2026-01-02T00:08:30Z"  # both contacts exist, no merge happened yet
QUESTIONS: list[tuple[str, str | None, str | None]] = [
    ("mia", "carla@cust.test", None), ("mia", "old@cust.test", None), ("max", None, None),
    ("ivy", "old@cust.test", None), ("mia", "carla@cust.test", BEFORE_MERGES)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crmsync.db"
    (tmp_path / "story.jsonl").write_text(jsonl([*STORY, *MORE]))
    result = run(path, "apply", str(tmp_path / "story.jsonl"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{len(STORY) + len(MORE)} applied"), result.stdout
    return path


def token(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {issue(SECRET, 'acme', user, False)}"}


def cli_answer(db: Path, viewer: str, email: str | None, at: str | None) -> Any:
    args = ["records", "--tenant", "acme", "--viewer", viewer]
    args += ["--email", email] if email else []
    args += ["--at", at] if at else []
    return query(db, *args)


@contextmanager
def serving(db: Path) -> Iterator[httpx.Client]:
    engine = Engine.open_sqlite(str(db))
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    try:
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        engine.close()


def http_answer(client: httpx.Client, viewer: str, email: str | None, at: str | None) -> Any:
    params = {k: v for k, v in (("email", email), ("at", at)) if v}
    response = client.get("/v1/records", params=params, headers=token(viewer))
    assert response.status_code == 200, response.text
    return response.json()


def test_c9_merged_away_contacts_are_answered_by_their_survivor_in_cli_and_http(
        db: Path) -> None:
    cli = [cli_answer(db, *q) for q in QUESTIONS]
    ids = [[r["record"] for r in answer] for answer in cli]
    assert ids[0] == ["c-1"]  # DUPLICATE has the address too, but is merged into c-1
    assert ids[1] == ["c-1"]  # only c-3 holds it: its survivor stands in
    assert cli[1][0]["emails"] == ["carla@cust.test"]  # the survivor as it is
    assert ids[2] == ["c-1"]  # a full listing: neither merged-away contact
    assert ids[3] == []  # ivy may access neither c-3 nor c-1
    assert ids[4] == ["c-1", DUPLICATE]  # E4: before the merges both were records
    with serving(db) as client:
        assert [http_answer(client, *q) for q in QUESTIONS] == cli


def test_c9_deal_commands_naming_a_merged_away_contact_are_refused_over_http(
        db: Path) -> None:
    deal = {"cmd": "CreateDeal", "tenant": "acme", "record": "d-1", "owner": "mia",
            "name": "Deal", "contacts": ["c-1", DUPLICATE], "stage": "open"}
    with serving(db) as client:
        refused = client.post("/v1/commands", json=deal, headers=token("mia"))
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"] == [{
            "field": "contacts.1",
            "reason": f"contact {DUPLICATE!r} is merged into 'c-1'; link that one"}]
        created = client.post("/v1/commands", json={**deal, "contacts": ["c-1"]},
                              headers=token("mia"))
        assert created.status_code == 200 and created.json()["applied"] == 1, created.text
        link = {"cmd": "LinkDealContact", "tenant": "acme", "deal": "d-1", "contact": "c-3"}
        refused = client.post("/v1/commands", json=link, headers=token("max"))
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "contact"
        assert "merged into 'c-1'" in refused.json()["errors"][0]["reason"]
