"""The auditor routes over HTTP (SPEC §7, V11, V12) against a real uvicorn and a SQLite engine:
access, access history, explain for another viewer and the NDJSON export, for admins only;
members, managers and service tokens get 404 "not found", as for unknown ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from loopback import Server
from office import OFFICE
from test_http_api import JSONL, SECRET, SERVICE, jsonl, token

from adapters.http.api import create_app
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

LATER = [
    {"cmd": "MarkThreadPrivate", "user": "mia", "threads": ["mb:t1"]},  # minute 20
    {"cmd": "MarkThreadShared", "user": "mia", "threads": ["mb:t1"]},  # minute 21
]
ADA, MAX, MIA = token("ada"), token("max"), token("mia")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    engine = Engine.open_sqlite(str(tmp_path_factory.mktemp("audit") / "crmsync.db"))
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        body = jsonl("acme", OFFICE, 0) + jsonl("acme", LATER, 20)
        answer = client.post("/v1/commands", content=body, headers={**SERVICE, **JSONL}).json()
        assert answer["applied"] == len(OFFICE) + len(LATER), answer
        yield client
    engine.close()


def test_v11_http_access_and_history_for_admins(api: httpx.Client) -> None:
    during = api.get("/v1/threads/mb:t1/access", params={"at": "2026-01-02T00:20:30Z"},
                     headers=ADA)
    assert during.status_code == 200, during.text
    visible = {e["user"]: e["visible"] for e in during.json()}
    assert visible == {"ada": False, "max": False, "mia": True, "ivy": False}
    history = api.get("/v1/threads/mb:t1/access-history", headers=ADA)
    assert history.status_code == 200, history.text
    spans = {e["user"]: [(i["from"][11:16], i["to"] and i["to"][11:16]) for i in e["intervals"]]
             for e in history.json()}
    assert spans == {"ada": [("00:07", "00:20"), ("00:21", None)],
                     "max": [("00:07", "00:20"), ("00:21", None)],
                     "mia": [("00:06", None)], "ivy": []}


def test_v11_http_explain_for_another_viewer_is_for_admins(api: httpx.Client) -> None:
    hidden = api.get("/v1/threads/mb:t1/explain", params={"viewer": "ivy"}, headers=ADA)
    assert hidden.status_code == 200, hidden.text
    assert hidden.json()["viewer"] == "ivy"
    assert hidden.json()["visible"] is False
    assert any(r["rule"] == "V8" for r in hidden.json()["rules"])
    seen = api.get("/v1/threads/mb:t1/explain", params={"viewer": "max"}, headers=ADA)
    assert seen.json()["visible"] is True
    own = api.get("/v1/threads/mb:t1/explain", params={"viewer": "mia"}, headers=MIA)
    assert own.status_code == 200


@pytest.mark.parametrize("who", ["max", "mia", "service"])
def test_v12_http_auditor_routes_are_not_found_for_everyone_else(api: httpx.Client,
                                                                 who: str) -> None:
    headers = SERVICE if who == "service" else token(who)
    for path, params in (("/v1/threads/mb:t1/access", {}),
                         ("/v1/threads/mb:t1/access-history", {}),
                         ("/v1/threads/mb:t1/explain", {"viewer": "ada"}),
                         ("/v1/admin/export", {})):
        response = api.get(path, params=params, headers=headers)
        assert (response.status_code, response.json()) == (404, {"detail": "not found"}), path


def test_v12_http_unknown_thread_and_foreign_tenant_are_not_found(api: httpx.Client) -> None:
    assert api.get("/v1/threads/mb:nope/access-history", headers=ADA).status_code == 404
    other = token("ada", tenant="other")  # no such user there: the token itself is refused (§8)
    assert api.get("/v1/threads/mb:t1/access", headers=other).status_code == 401
    assert api.get("/v1/admin/export", headers=other).status_code == 401


def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_http_export_streams_ndjson_with_content_only_on_request(api: httpx.Client) -> None:
    plain = _ndjson(api.get("/v1/admin/export", headers=ADA))
    assert len(plain) == len(OFFICE) + len(LATER)
    assert [e["position"] for e in plain] == list(range(1, len(plain) + 1))
    assert "Hello" not in json.dumps(plain)
    full = _ndjson(api.get("/v1/admin/export", params={"with_content": "true",
                                                       "since": "2026-01-02T00:06:00Z",
                                                       "until": "2026-01-02T00:06:00Z"},
                           headers=ADA))
    assert [e["type"] for e in full] == ["MessageSynced"]
    assert full[0]["payload"]["message"]["subject"] == "Hello"
    bad = api.get("/v1/admin/export", params={"since": "yesterday"}, headers=ADA)
    assert bad.status_code == 422
