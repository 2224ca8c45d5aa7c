"""The admin routes and pages over HTTP (issue #14) against a real uvicorn and a SQLite engine:
`/v1/admin/problems`, `/v1/admin/settings` and the pages at `/ui/`, for active admins only
(V12: members, managers, services, deactivated admins and bad tokens get 404 and nothing else).
The pages escape what they show and forbid scripts (CSP); sign-in sets an HttpOnly,
SameSite=Strict cookie; every page is GET only."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from admin_story import MARKUP, STORY, lines
from loopback import Server
from test_http_api import SECRET, SERVICE, token

from adapters.http.api import create_app
from runners.services import admin
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

ADA = token("ada")
OTHERS = {"max": token("max"), "mia": token("mia"), "ivy": token("ivy"), "service": SERVICE,
          "foreign": token("ada", "other"), "forged": {"authorization": "Bearer x.y.z"},
          "none": {}}
PAGES = ["/ui/", "/ui/mailboxes", "/ui/settings", "/ui/access", "/ui/access?thread=mb1:t1",
         "/ui/explain?thread=mb1:t1&viewer=max"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, httpx.Client]]:
    engine = Engine.open_sqlite(str(tmp_path_factory.mktemp("admin") / "crmsync.db"))
    report = engine.apply_lines(lines())
    assert report.applied == len(STORY), report.rejected
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield engine, client
    engine.close()


def test_s7_http_problems_and_settings_answer_as_the_cli(
        served: tuple[Engine, httpx.Client]) -> None:
    engine, api = served
    problems = api.get("/v1/admin/problems", headers=ADA)
    assert problems.status_code == 200, problems.text
    # the same answer as `crmsync query problems` (the stale check against a clock: none here)
    expected = [p for p in admin.problems(engine, "acme", "ada") if p["kind"] != "stale"]
    assert [p for p in problems.json() if p["kind"] != "stale"] == expected
    assert len(expected) == 6
    stale = api.get("/v1/admin/problems", params={"stale_after": 1}, headers=ADA).json()
    assert {p["mailbox"] for p in stale if p["kind"] == "stale"} == {"mb1", "mb4"}
    settings = api.get("/v1/admin/settings", headers=ADA)
    assert settings.status_code == 200, settings.text
    assert settings.json() == admin.settings(engine, "acme", "ada")


@pytest.mark.parametrize("who", sorted(OTHERS))
def test_v12_http_admin_routes_and_pages_are_not_found_for_others(
        served: tuple[Engine, httpx.Client], who: str) -> None:
    _, api = served
    for path in ("/v1/admin/problems", "/v1/admin/settings"):
        answer = api.get(path, headers=OTHERS[who])
        # the API refuses tokens of inactive or unknown users at once (401, §8)
        expected = 401 if who in ("forged", "none", "foreign", "ivy") else 404
        assert answer.status_code == expected, (path, answer.text)
    for path in PAGES:
        page = api.get(path, headers=OTHERS[who])
        assert page.status_code == 404, (path, page.text)
        for secret in ("mb1", "mia@acme.test", "drop@acme.test", "acme"):
            assert secret not in page.text, (path, secret)


def test_ui_pages_render_escaped_with_a_strict_csp(served: tuple[Engine, httpx.Client]) -> None:
    _, api = served
    for path in PAGES:
        page = api.get(path, headers=ADA)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<script" not in page.text  # no script at all, the dead letter's included
    problems = api.get("/ui/", headers=ADA).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in problems and MARKUP not in problems
    for needle in ("ConfirmMailboxDeletions", "a1, a2, a3", "crmsync deadletters replay dl-1"):
        assert needle in problems
    access = api.get("/ui/access", params={"thread": "mb1:t1"}, headers=ADA).text
    assert access.count("<svg") == 1 and access.count("<title>") >= 4  # one per bar
    assert "/ui/explain?thread=mb1%3At1&amp;viewer=max" in access
    unknown = api.get("/ui/access", params={"thread": "mb9:<b>"}, headers=ADA)
    assert unknown.status_code == 200 and "No thread <strong>mb9:&lt;b&gt;</strong>" in unknown.text


def test_ui_signin_sets_a_strict_httponly_cookie_and_pages_are_get_only(
        served: tuple[Engine, httpx.Client]) -> None:
    _, api = served
    bad = api.post("/ui/signin", data={"token": "nope"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    bearer = ADA["authorization"].split(" ", 1)[1]
    signed = api.post("/ui/signin", data={"token": bearer}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    with httpx.Client(base_url=str(api.base_url), timeout=30) as browser:
        browser.cookies.set("crmsync_ui", bearer)
        assert browser.get("/ui/settings").status_code == 200
        for path in ("/ui/", "/ui/settings", "/ui/mailboxes"):
            assert browser.post(path).status_code == 405
