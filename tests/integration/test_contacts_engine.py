"""Contact merge state (issue #5) over HTTP and on PostgreSQL: `GET /v1/contacts/{record}/merge`
answers like the CLI; PostgreSQL answers like SQLite, rebuilds and verifies (E3, E4, V12)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from contact_story import DUPLICATE, STORY, UNMERGE, check_merged
from loopback import Server
from test_http_api import JSONL, SECRET, jsonl, token

from adapters.http.api import create_app
from domain.errors import NotFound
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine

pytestmark = pytest.mark.integration
SERVICE = token("contact-sync", service=True)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    engine = Engine.open_sqlite(str(tmp_path / "crmsync.db"))
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/commands", content=jsonl("acme", STORY, 0),
                             headers={**SERVICE, **JSONL}).json()
        assert answer["applied"] == len(STORY), answer
        yield client
    engine.close()


def test_c8_c9_http_merge_state_answers_like_the_cli(api: httpx.Client) -> None:
    response = api.get("/v1/contacts/c-1/merge", headers=token("max"))
    assert response.status_code == 200, response.text
    check_merged(response.json())
    away = api.get(f"/v1/contacts/{DUPLICATE}/merge", headers=token("mia"))
    assert away.json() == {"merged_into": "c-1"}


@pytest.mark.parametrize(("user", "tenant", "record"), [
    ("ivy", "acme", "c-1"), ("mia", "acme", "nope"), ("mia", "globex", "c-1")])
def test_v12_http_merge_state_is_404_for_invisible_unknown_and_foreign(
        api: httpx.Client, user: str, tenant: str, record: str) -> None:
    response = api.get(f"/v1/contacts/{record}/merge", headers=token(user, tenant))
    if tenant == "globex":  # no such user there: the token is refused first (§8)
        assert response.status_code == 401
        return
    assert response.status_code == 404
    assert response.json() == {"detail": "not found"}


def test_c10_http_unmerge_then_past_answer(api: httpx.Client) -> None:
    cmd = {"tenant": "acme", "at": "2026-01-02T00:40:00Z", **UNMERGE}
    assert api.post("/v1/commands", json=cmd, headers=SERVICE).json()["applied"] == 1
    back = api.get(f"/v1/contacts/{DUPLICATE}/merge", headers=token("mia")).json()
    assert back["survivor"] == DUPLICATE and back["merged"] == []
    past = api.get(f"/v1/contacts/{DUPLICATE}/merge", params={"at": "2026-01-02T00:20:00Z"},
                   headers=token("mia")).json()
    assert past == {"merged_into": "c-1"}


def _answers(engine: Engine, at: datetime | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for viewer in ("ada", "max", "mia", "ivy"):
        for record in ("c-1", DUPLICATE, "nope"):
            try:
                out[f"{viewer}/{record}"] = engine.query_contact("acme", viewer, record, at=at)
            except NotFound:
                out[f"{viewer}/{record}"] = "not found"
    return out


def test_e3_postgres_contact_merge_state_equals_sqlite_and_rebuilds(
        postgres_url: str, tmp_path: Path) -> None:
    lite = open_engine(str(tmp_path / "lite.db"), None)
    pg = open_engine(str(tmp_path / "unused.db"), postgres_url)
    try:
        lines = [orjson.dumps({"tenant": "acme", "at": f"2026-01-02T00:{i:02d}:00Z", **c})
                 for i, c in enumerate([*STORY, UNMERGE])]
        for engine in (lite, pg):
            report = engine.apply_lines(lines)
            assert not report.rejected, report.rejected
        live = _answers(pg)
        assert live == _answers(lite)
        assert live["ivy/c-1"] == "not found" and live["max/c-1"]["merged"] == []
        middle = datetime.fromisoformat("2026-01-02T00:09:30+00:00")
        assert _answers(pg, middle) == _answers(lite, middle)
        check_merged(_answers(pg, middle)["max/c-1"])
        expected = lite.checksums()
        assert pg.checksums() == expected
        pg.rebuild("contact")
        assert pg.checksums()["contact"] == expected["contact"]
        assert all(live == rebuilt for live, rebuilt in pg.verify().values())
    finally:
        lite.close()
        pg.close()
