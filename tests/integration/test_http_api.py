"""The HTTP API against a real uvicorn on a loopback port and a temporary SQLite engine.

No mocks: requests go over TCP with httpx; commands are applied through POST /v1/commands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback import Server
from office import OFFICE

from adapters.eventstore.store import EventStore
from adapters.http.api import create_app
from adapters.http.tokens import issue
from adapters.views.memory import MemoryViews
from runners.bootstrap.settings import load_settings
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

SECRET = b"test-secret-0123456789abcdef"
MAX_WAIT = 0.5
JSONL = {"content-type": "application/x-ndjson"}

SETUP = OFFICE
OTHER = [
    {"cmd": "AddUser", "user": "oz", "email": "oz@other.test", "role": "admin"},
    {"cmd": "CreateLead", "record": "lead-x", "owner": "oz", "name": "X", "emails": ["x@x.test"]},
]


def jsonl(tenant: str, commands: list[dict[str, Any]], minute: int) -> str:
    return "".join(json.dumps({"tenant": tenant, "at": f"2026-01-02T00:{minute + i:02d}:00Z", **c})
                   + "\n" for i, c in enumerate(commands))




def token(user: str, tenant: str = "acme", service: bool = False, **kw: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {issue(SECRET, tenant, user, service, **kw)}"}


SERVICE = token("provisioner", service=True)


def forge(header: str) -> str:
    """The same token with the first character of its signature changed."""
    head, _, signature = header.rpartition(".")
    return f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    path = tmp_path_factory.mktemp("http") / "crmsync.db"
    engine = Engine.open_sqlite(str(path))
    app = create_app(engine, SECRET, max_wait=MAX_WAIT, token_max_age=3600)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/commands", content=jsonl("acme", SETUP, 0), headers={
            **SERVICE, **JSONL}).json()
        assert answer["applied"] == len(SETUP), answer
        other = client.post("/v1/commands", content=jsonl("other", OTHER, 0), headers={
            **token("svc", "other", True), **JSONL}).json()
        assert other["applied"] == len(OTHER), other
        yield client
    engine.close()


def command(api: httpx.Client, who: dict[str, str], cmd: dict[str, Any]) -> dict[str, Any]:
    """One command as a JSON Lines batch of one line: answered 200 per line even if rejected."""
    response = api.post("/v1/commands", content=json.dumps({"tenant": "acme", **cmd}) + "\n",
                        headers={**who, **JSONL})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# -- queries ------------------------------------------------------------------------------------
def test_every_query_endpoint_answers_like_the_cli(api: httpx.Client) -> None:
    timeline = api.get("/v1/records/lead-1/timeline", headers=token("max")).json()
    assert [t["thread"] for t in timeline] == ["mb:t1"]
    assert timeline[0]["capabilities"]["reply"] is False and timeline[0]["shared"] is True
    mailbox = api.get("/v1/mailbox", params={"label": "INBOX"}, headers=token("mia")).json()
    assert [t["thread"] for t in mailbox] == ["mb:t1"]
    assert api.get("/v1/mailbox", params={"label": "SENT"}, headers=token("mia")).json() == []
    own = api.get("/v1/threads/mb:t1", headers=token("mia")).json()
    assert own["messages"][0]["read"] is True and own["messages"][0]["from"] == "olga@x.test"
    other = api.get("/v1/threads/mb:t1", headers=token("max")).json()
    assert "read" not in other["messages"][0]  # V10: absent, not null
    explain = api.get("/v1/threads/mb:t1/explain", params={"record": "lead-1"},
                      headers=token("max")).json()
    assert explain["visible"] is True and explain["viewer"] == "max"
    assert any(step["rule"] == "V3" for step in explain["rules"])
    records = api.get("/v1/records", params={"email": "olga@x.test"}, headers=token("mia"))
    assert [r["record"] for r in records.json()] == ["lead-1"]
    status = api.get("/v1/mailboxes/mb/status", headers=token("ada")).json()
    assert status["mailbox"] == "mb" and status["synced"] == 1
    assert api.get("/v1/mailboxes/mb/status", headers=token("mia")).status_code == 200
    assert "x-request-id" in {k.lower() for k in api.get("/v1/mailbox", headers=token("mia"))
                              .headers}


def test_at_answers_as_of_a_past_domain_time(api: httpx.Client) -> None:
    before_sync = api.get("/v1/records/lead-1/timeline", params={"at": "2026-01-02T00:05:30Z"},
                          headers=token("mia"))
    assert before_sync.status_code == 200 and before_sync.json() == []
    # the same instant written with another offset
    same = api.get("/v1/records/lead-1/timeline", params={"at": "2026-01-02T02:05:30+02:00"},
                   headers=token("mia"))
    assert same.json() == []
    before_lead = api.get("/v1/records/lead-1/timeline", params={"at": "2026-01-02T00:04:00Z"},
                          headers=token("mia"))
    assert before_lead.status_code == 404
    later = api.get("/v1/records/lead-1/timeline", params={"at": "2026-01-02T00:30:00Z"},
                    headers=token("mia"))
    assert [t["thread"] for t in later.json()] == ["mb:t1"]


# -- tokens -------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {},
    {"authorization": "Bearer"},
    {"authorization": "Basic bWlhOnB3"},
    {"authorization": "Bearer not-a-token"},
    {"authorization": "Bearer crm1.e30.AAAA"},
    {"authorization": f"Bearer {issue(b'another-secret-0123456789', 'acme', 'ada')}"},
    {"authorization": forge(token("ada")["authorization"])},  # forged signature
    token("ada", issued_at=int(time.time()) - 7200),  # older than the max age
    token("ada", issued_at=int(time.time()) + 3600),  # issued in the future
])
def test_missing_bad_forged_and_expired_tokens_answer_401(api: httpx.Client,
                                                          headers: dict[str, str]) -> None:
    for response in (api.get("/v1/mailbox", headers=headers),
                     api.post("/v1/commands", json={"cmd": "AddUser"}, headers=headers)):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"


def test_forged_payload_is_refused(api: httpx.Client) -> None:
    """Swapping the payload of a valid token (another user) breaks the signature."""
    good = token("ivy")["authorization"].split(".")
    admin = token("ada")["authorization"].split(".")
    forged = f"{good[0]}.{admin[1]}.{good[2]}"
    assert api.get("/v1/mailbox", headers={"authorization": forged}).status_code == 401


def test_viewer_and_tenant_are_always_the_tokens(api: httpx.Client) -> None:
    # ivy cannot ask as mia or ada, whatever the parameters say
    params = {"viewer": "ada", "tenant": "acme", "user": "mia"}
    assert api.get("/v1/mailbox", params=params, headers=token("ivy")).json() == []
    assert api.get("/v1/records/lead-1/timeline", params=params,
                   headers={**token("ivy"), "x-viewer": "ada"}).status_code == 404
    # a token of another tenant sees that tenant only
    assert [r["record"] for r in api.get("/v1/records", headers=token("oz", "other")).json()] \
        == ["lead-x"]
    assert api.get("/v1/records", headers=token("ada")).json()[0]["record"] == "lead-1"


# -- not found ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("user", "tenant", "path"), [
    ("mia", "acme", "/v1/records/nope/timeline"),  # unknown
    ("ada", "acme", "/v1/records/lead-x/timeline"),  # foreign tenant's record
    ("oz", "other", "/v1/records/lead-1/timeline"),  # the other way round
    ("ivy", "acme", "/v1/records/lead-1/timeline"),  # invisible: no access
    ("ivy", "acme", "/v1/threads/mb:t1"),  # invisible thread
    ("oz", "other", "/v1/threads/mb:t1"),
    ("ivy", "acme", "/v1/threads/mb:t1/explain"),  # not an admin: no audit
    ("ada", "acme", "/v1/threads/mb:nope/explain"),
    ("ivy", "acme", "/v1/mailboxes/mb/status"),  # not the owner, not an admin
    ("oz", "other", "/v1/mailboxes/mb/status"),
    ("mia", "acme", "/v1/no/such/route"),
])
def test_unknown_foreign_and_invisible_ids_answer_404(api: httpx.Client, user: str, tenant: str,
                                                      path: str) -> None:
    response = api.get(path, headers=token(user, tenant))
    assert response.status_code == 404
    assert response.json() == {"detail": "not found"}


def test_thread_ids_may_contain_colons_and_slashes(api: httpx.Client) -> None:
    command(api, SERVICE, {"cmd": "SyncMessage", "mailbox": "mb", "at": "2026-01-02T00:20:00Z",
                           "message": {"id": "m9", "thread_id": "a/b:c", "from": "olga@x.test",
                                       "to": ["mia@acme.test"], "subject": "Odd id",
                                       "sent_at": "2026-01-02T00:20:00Z"}})
    answer = api.get("/v1/threads/mb:a/b:c", headers=token("mia"))
    assert answer.status_code == 200 and answer.json()["thread"] == "mb:a/b:c"
    explain = api.get("/v1/threads/mb:a/b:c/explain", headers=token("mia")).json()
    assert explain["thread"] == "mb:a/b:c" and explain["visible"] is True


# -- malformed input ----------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/mailbox", {"at": "yesterday"}, "at"),
    ("/v1/mailbox", {"at": "2026-01-01T00:00:00"}, "at"),  # no offset
    ("/v1/mailbox", {"min_position": "-1"}, "min_position"),
    ("/v1/records/lead-1/timeline", {"min_position": "abc"}, "min_position"),
])
def test_malformed_input_answers_422_naming_the_field(api: httpx.Client, path: str,
                                                      params: dict[str, str], field: str) -> None:
    response = api.get(path, params=params, headers=token("mia"))
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert response.json()["detail"].startswith(f"{field}: ")


def test_malformed_commands(api: httpx.Client) -> None:
    empty = api.post("/v1/commands", content=b"", headers={**SERVICE, **JSONL})
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "body"
    html = api.post("/v1/commands", content=b"<p>",
                    headers={**SERVICE, "content-type": "text/html"})
    assert html.status_code == 415
    lines = b'{not json\n\n{"cmd": "AddUser", "tenant": "acme", "user": 5}\n[1]\n\xff\xfe\n'
    answer = api.post("/v1/commands", content=lines, headers={**SERVICE, **JSONL})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [(r["line"], r["result"], r["field"]) for r in results] == [
        (1, "rejected", "(line)"), (3, "rejected", "user"), (4, "rejected", "(line)"),
        (5, "rejected", "(line)")]


# -- commands and permissions -------------------------------------------------------------------
def test_user_commands_follow_the_permission_table(api: httpx.Client) -> None:
    def outcome(user: str, cmd: dict[str, Any]) -> tuple[str, str | None, str | None]:
        result = command(api, token(user), cmd)["results"][0]
        return result["result"], result.get("field"), result.get("reason")

    assert outcome("mia", {"cmd": "AddUser", "user": "zed", "email": "z@acme.test",
                           "role": "admin"})[:2] == ("rejected", "cmd")
    assert outcome("mia", {"cmd": "UpdateMessage", "mailbox": "mb", "id": "m1", "read": False}
                   ) == ("rejected", "cmd", "provider-side input needs a service token")
    assert outcome("mia", {"cmd": "ShareAddress", "user": "max", "record": "lead-1",
                           "address": "olga@x.test"})[:2] == ("rejected", "user")
    assert outcome("ivy", {"cmd": "ChangeOwner", "record": "lead-1", "owner": "ivy"}
                   ) == ("rejected", "record", "not found")
    assert outcome("ivy", {"cmd": "MarkThreadPrivate", "user": "ivy", "threads": ["mb:t1"]}
                   ) == ("rejected", "threads.0", "not found")
    assert outcome("mia", {"cmd": "SendEmail", "user": "mia", "mailbox": "mb", "kind": "single",
                           "to": ["olga@x.test"], "subject": "Re", "body": "b",
                           "from": "mia@acme.test"})[0] == "applied"
    assert outcome("max", {"cmd": "AddCollaborator", "record": "lead-1", "user": "ivy"}
                   )[0] == "applied"  # manager above the owner
    assert outcome("ivy", {"cmd": "RemoveCollaborator", "record": "lead-1", "user": "ivy"}
                   )[:2] == ("rejected", "record")  # collaborator, not owner or manager
    assert outcome("ada", {"cmd": "RemoveCollaborator", "record": "lead-1", "user": "ivy"}
                   )[0] == "applied"  # admin


def test_actor_is_the_token_user_and_foreign_tenants_are_refused(api: httpx.Client) -> None:
    before = command(api, token("mia"), {"cmd": "MarkThreadShared", "user": "mia",
                                         "threads": ["mb:t1"], "actor": "ada"})
    assert before["results"][0]["result"] == "applied"
    explain = api.get("/v1/threads/mb:t1/explain", params={"record": "lead-1"},
                      headers=token("max")).json()
    flag = [s for s in explain["rules"] if s["rule"] == "V1"]
    assert flag and flag[0]["event"]["actor"] == "mia"
    # a command for another tenant is rejected and recorded nowhere (the log does not move)
    foreign = api.post("/v1/commands", content=json.dumps({
        "tenant": "other", "cmd": "DeactivateUser", "user": "oz"}), headers={**SERVICE, **JSONL}
    ).json()
    assert foreign["results"][0]["field"] == "tenant"
    assert foreign["position"] == before["position"]
    assert api.get("/v1/records", headers=token("oz", "other")).json() != []
    # a rejection in the caller's own tenant is recorded (E1) under the caller's actor
    own = command(api, token("ivy"), {"cmd": "DeleteUser", "user": "mia"})
    assert own["results"][0]["result"] == "rejected" and own["position"] == foreign["position"] + 1


def test_service_commands_are_idempotent(api: httpx.Client) -> None:
    cmd = {"cmd": "CreateLead", "record": "lead-2", "owner": "max", "name": "Two",
           "emails": ["two@x.test"], "command_id": "c-lead-2"}
    first = command(api, SERVICE, cmd)
    second = command(api, SERVICE, cmd)
    assert (first["applied"], second["unchanged"]) == (1, 1)
    assert second["results"] == [{"line": 1, "result": "unchanged", "cmd": None, "field": None,
                                  "reason": None}]


# -- read your writes ---------------------------------------------------------------------------
def test_min_position_reads_your_writes(api: httpx.Client) -> None:
    written = command(api, token("mia"), {"cmd": "CreateLead", "record": "lead-3", "owner": "mia",
                                          "name": "Three", "emails": ["three@x.test"]})
    assert written["applied"] == 1
    seen = api.get("/v1/records", params={"email": "three@x.test",
                                          "min_position": written["position"]},
                   headers=token("mia"))
    assert [r["record"] for r in seen.json()] == ["lead-3"]
    beyond = api.get("/v1/records", params={"min_position": written["position"] + 1000},
                     headers=token("mia"))
    assert beyond.status_code == 422
    assert beyond.json()["errors"][0]["field"] == "min_position"


def test_min_position_waits_for_another_writer_or_answers_503(tmp_path: Path) -> None:
    """Another process appends to the same SQLite log; the server's views lag until they catch
    up. With max_wait 0 the server does not wait: 503 with Retry-After, then 200 once caught up."""
    path = str(tmp_path / "crmsync.db")
    engine = Engine.open_sqlite(path)
    # writes the log (with the configured content key, as the server's engine), not the views
    writer = Engine(EventStore.sqlite(path, load_settings().secret("CONTENT_KEY")), MemoryViews())
    try:
        writer.apply_lines(jsonl("acme", SETUP, 0).splitlines())
        for max_wait, expected in ((0.0, 503), (2.0, 200)):
            position = writer.apply_lines([json.dumps({
                "tenant": "acme", "cmd": "CreateLead", "record": f"lead-w{max_wait}",
                "owner": "mia", "name": "W", "emails": []})]).tenant_positions["acme"]
            app = create_app(engine, SECRET, max_wait=max_wait)
            with Server(app) as server, httpx.Client(base_url=server.url) as client:
                answer = client.get("/v1/records", params={"min_position": position},
                                    headers=token("mia"))
            assert answer.status_code == expected, answer.text
            if expected == 503:
                assert answer.headers["retry-after"] == "1"
                assert f"min_position {position}" in answer.json()["detail"]
            else:
                assert f"lead-w{max_wait}" in [r["record"] for r in answer.json()]
    finally:
        writer.close()
        engine.close()


# -- the schema ---------------------------------------------------------------------------------
def test_openapi_is_a_real_schema(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {"/v1/records/{record}/timeline", "/v1/mailbox", "/v1/threads/{thread}",
                          "/v1/threads/{thread}/explain", "/v1/records",
                          "/v1/mailboxes/{mailbox}/status", "/v1/contacts/{record}/merge",
                          "/v1/commands", "/v1/threads/{thread}/access",
                          "/v1/threads/{thread}/access-history", "/v1/admin/export",
                          "/v1/admin/problems", "/v1/admin/settings"}
    ok = paths["/v1/threads/{thread}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/ThreadAnswer")
    assert {"ThreadSummary", "ThreadAnswer", "Explanation", "RecordSummary", "SyncStatus",
            "CommandsAnswer"} <= set(spec["components"]["schemas"])


def test_schema_property_no_5xx_and_conforming_answers(tmp_path: Path) -> None:
    """schemathesis generates requests from /openapi.json (tokens of several users)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.specs.openapi import checks

    engine = Engine.open_sqlite(str(tmp_path / "crmsync.db"))
    app = create_app(engine, SECRET, max_wait=0.01)
    with Server(app) as server, httpx.Client(base_url=server.url) as client:
        client.post("/v1/commands", content=jsonl("acme", SETUP, 0), headers={**SERVICE, **JSONL})
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        failures: list[str] = []
        callers = st.sampled_from([token("mia"), token("ada"), token("ivy"),
                                   token("provisioner", service=True), {}])
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(), headers=callers)
            def check(case: Any, headers: dict[str, str]) -> None:
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.path, response.text)
                case.validate_response(response, checks=[
                    checks.status_code_conformance, checks.content_type_conformance,
                    checks.response_schema_conformance])

            try:
                check()
            except Exception as exc:
                failures.append(f"{operation.label}: {exc}")
        assert not failures, "\n".join(failures)
    engine.close()
