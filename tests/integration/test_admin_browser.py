"""The admin pages in a real browser (issue #14): Playwright drives Debian's `chromium`
(/usr/bin/chromium; `.ci/run` installs it when missing, Playwright cannot download browsers
here). An admin signs in through the form and every page renders with no console error and no
page error; a member's cookie sees nothing (404, nothing of the tenant). Screenshots of every
page go to tests/artifacts/ (ignored by git), or $CRMSYNC_ARTIFACTS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_story import STORY, lines
from loopback import Server
from services import missing
from test_http_api import SECRET

from adapters.http.api import create_app
from adapters.http.tokens import issue
from runners.services.engine import Engine

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("CRMSYNC_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CRMSYNC_ARTIFACTS")
                 or Path(__file__).resolve().parents[1] / "artifacts")
PAGES = {"problems": "/ui/", "mailboxes": "/ui/mailboxes", "settings": "/ui/settings",
         "access": "/ui/access?thread=mb1:t1", "explain": "/ui/explain?thread=mb1:t1&viewer=max"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine = Engine.open_sqlite(str(tmp_path_factory.mktemp("ui") / "crmsync.db"))
    report = engine.apply_lines(lines())
    assert report.applied == len(STORY), report.rejected
    app = create_app(engine, SECRET, max_wait=0.5, token_max_age=3600)
    with Server(app) as server:
        yield server.url
    engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        missing(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def sign_in(browser: Any, site: str, user: str) -> tuple[Any, list[str]]:
    """A new browser context signed in as `user` through the form; the console errors and
    page errors it sees are collected in the returned list."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{site}/ui/signin")
    page.fill("#token", issue(SECRET, "acme", user, False, ttl=600))
    page.click("button[type=submit]")
    return page, errors


def test_ui_every_page_renders_for_an_admin_without_console_errors(browser: Any,
                                                                   site: str) -> None:
    page, errors = sign_in(browser, site, "ada")
    assert page.url == f"{site}/ui/"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        response = page.goto(site + path)
        assert response is not None and response.status == 200, (name, response)
        assert page.locator("h1").count() == 1
        page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)
    assert errors == []
    # the pages show what they are for
    page.goto(site + PAGES["problems"])
    shown = page.locator("tbody .kind").all_inner_texts()  # stale: against the wall clock
    assert sorted(k for k in shown if k != "stale") == [
        "dead_letter", "dead_letter", "disconnected", "gone", "refused", "suspect"]
    assert "ConfirmMailboxDeletions" in page.inner_text("main")
    page.goto(site + PAGES["settings"])
    assert "drop@acme.test" in page.inner_text("main")
    page.goto(site + PAGES["access"])
    bars = page.locator("svg rect title")
    assert bars.count() >= 4
    assert "MessageSynced #" in (bars.first.text_content() or "")  # the tooltip's events
    page.click("a[href*='viewer=max']")  # explain, one click away
    assert "/ui/explain?" in page.url and "max" in page.inner_text("h1")
    page.click("text=Sign out")
    assert page.url == f"{site}/ui/signin"
    assert page.goto(site + PAGES["problems"]).status == 404  # the cookie is gone
    assert errors == ["console error: Failed to load resource: the server responded with a "
                      "status of 404 (Not Found)"]
    page.context.close()


def test_v12_ui_a_members_cookie_sees_nothing(browser: Any, site: str) -> None:
    page, _ = sign_in(browser, site, "mia")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        response = page.goto(site + path)
        assert response is not None and response.status == 404, name
        text = page.inner_text("body")
        assert "Not found" in text
        for secret in ("mb1", "mia@acme.test", "acme", "ConfirmMailboxDeletions"):
            assert secret not in page.content(), (name, secret)
    page.screenshot(path=str(ARTIFACTS / "ui-member-404.png"))
    page.context.close()
