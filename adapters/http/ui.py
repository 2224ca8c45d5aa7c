"""Admin pages at `/ui/` (issue #14): server-rendered Jinja2 and inline SVG, no JavaScript.

Pages: problems (the attention list), mailbox sync status, settings, a thread's access over
time (one row per user, a bar per interval in which they could see it, coloured by the deciding
rule, the opening and closing events as SVG `<title>` tooltips) and explain for one user.

Sign-in: POST /ui/signin with a bearer token sets it as an HttpOnly, SameSite=Strict cookie
scoped to /ui (the Authorization header works too). Everything else is GET. Only active admins
see a page: anyone else (no token, a bad one, members, managers, services) gets the same 404
page, which shows nothing of the tenant. Jinja2 autoescapes everything; the CSP allows no script.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from adapters.http.tokens import InvalidToken, Principal, verify
from domain.errors import NotFound

if TYPE_CHECKING:
    from runners.services.engine import Engine

Answer = Callable[[int | None, Callable[[], Any]], Any]
COOKIE = "crmsync_ui"
MAX_FORM = 16 * 1024
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
# colours of the deciding rules on the access chart (colour-blind safe Okabe-Ito order)
RULE_COLOURS = {"V9": "#0072B2", "V1": "#E69F00", "V2": "#009E73", "V3": "#56B4E9",
                "V4": "#CC79A7", "V5": "#D55E00", "V6": "#F0E442", "V7": "#999999",
                "V8": "#882255"}
OTHER_COLOUR = "#444444"
RULE_NAMES = {"V1": "thread marked shared", "V2": "address setting", "V3": "global level",
              "V5": "address setting inherited from a contact", "V8": "record view",
              "V9": "owner of the mailbox"}
# the pages' icon, served here so that the browser asks for nothing that 404s
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" '
           'height="16" rx="3" fill="#1f3a5f"/><rect x="3" y="4" width="7" height="3" '
           'fill="#56B4E9"/><rect x="6" y="9" width="7" height="3" fill="#E69F00"/></svg>')
CHART = {"width": 1000, "label": 140, "row": 28, "bar": 16}

_env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True),
                   trim_blocks=True, lstrip_blocks=True)


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status, headers=HEADERS)


def not_found() -> HTMLResponse:
    return render("notfound.html", 404)


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or None


def _principal(request: Request, token: str | None) -> Principal | None:
    if token is None:
        return None
    try:
        who = verify(request.app.state.secret, token, max_age=request.app.state.token_max_age)
    except InvalidToken:
        return None
    if who.service or request.app.state.refusal(who) is not None:
        return None
    return who


def _bar(start: datetime, end: datetime, first: datetime, span: float) -> tuple[float, float]:
    scale = CHART["width"] - CHART["label"] - 20
    x = CHART["label"] + (start - first).total_seconds() / span * scale
    width = max(3.0, (end - start).total_seconds() / span * scale)
    return round(x, 1), round(width, 1)


def chart(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of the access chart: one row per user, a bar per interval (open intervals run
    to the chart's right edge, the latest event time seen), ticks at both ends."""
    times = [datetime.fromisoformat(t) for e in history for i in e["intervals"]
             for t in (i["from"], i["to"]) if t is not None]
    if not times:
        return {"rows": [], "height": 40, "ticks": [], "first": None, "last": None,
                "rules": []}
    first, last = min(times), max(times)
    span = max((last - first).total_seconds() * 1.08, 60.0)  # room for open bars' arrows
    end = first + (last - first) * 1.08 if last > first else last
    rows, rules = [], set()
    for n, entry in enumerate(history):
        bars = []
        for i in entry["intervals"]:
            start = datetime.fromisoformat(i["from"])
            stop = datetime.fromisoformat(i["to"]) if i["to"] else max(end, start)
            x, width = _bar(start, stop, first, span)
            rules.add(i["rule"])
            bars.append({"x": x, "width": width, "interval": i,
                         "colour": RULE_COLOURS.get(i["rule"], OTHER_COLOUR)})
        rows.append({"y": 30 + n * CHART["row"], "entry": entry, "bars": bars})
    height = 50 + len(rows) * CHART["row"]
    ticks = []  # five time labels under the rows: what the bars' ends mean
    for k in range(5):
        when = first + (end - first) * k / 4
        x, _ = _bar(when, when, first, span)
        same_day = when.date() == first.date() and k > 0
        ticks.append({"x": x, "label": when.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M"),
                      "y": height - 4})
    return {"rows": rows, "height": height + 14, "ticks": ticks, "first": first.isoformat(),
            "last": last.isoformat(), "rules": [(r, RULE_COLOURS.get(r, OTHER_COLOUR),
                                                 RULE_NAMES.get(r, "")) for r in sorted(rules)]}


def add_ui_routes(app: FastAPI, engine: Engine, answer: Answer) -> None:
    from runners.services import admin, audit

    def admin_page(request: Request, name: str, query: Callable[[str, str], dict[str, Any]]
                   ) -> HTMLResponse:
        who = _principal(request, _token_of(request))
        if who is None:
            return not_found()
        user = str(who.user)

        def read() -> dict[str, Any]:
            audit.require_admin(engine, who.tenant, user)
            return query(who.tenant, user)

        try:
            context = answer(None, read)
        except NotFound:
            return not_found()
        return render(name, **{"tenant": who.tenant, "viewer": user, "page": name,
                               "geometry": CHART, **context})

    @app.get("/ui/favicon.svg", include_in_schema=False)
    def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml",
                        headers={**HEADERS, "Cache-Control": "max-age=86400"})

    @app.get("/ui/signin", response_class=HTMLResponse, include_in_schema=False)
    def signin_form() -> HTMLResponse:
        return render("signin.html")

    @app.post("/ui/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        body = await request.body()
        fields = parse_qs(body[:MAX_FORM].decode("utf-8", "replace"))
        token = (fields.get("token") or [""])[0].strip()
        if _principal(request, token or None) is None:
            return render("signin.html", 401, refused=True)
        done = RedirectResponse("/ui/", 303, headers=HEADERS)
        done.set_cookie(COOKIE, token, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return done

    @app.post("/ui/signout", include_in_schema=False)
    def signout() -> Response:
        done = RedirectResponse("/ui/signin", 303, headers=HEADERS)
        done.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return done

    @app.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
    def problems_page(request: Request) -> HTMLResponse:
        return admin_page(request, "problems.html", lambda t, u: {
            "problems": admin.problems(engine, t, u,
                                       stale_seconds=app.state.stale_sync_seconds)})

    @app.get("/ui/mailboxes", response_class=HTMLResponse, include_in_schema=False)
    def mailboxes_page(request: Request) -> HTMLResponse:
        return admin_page(request, "mailboxes.html", lambda t, u: {
            "mailboxes": engine.query_status(t, u)})

    @app.get("/ui/settings", response_class=HTMLResponse, include_in_schema=False)
    def settings_page(request: Request) -> HTMLResponse:
        return admin_page(request, "settings.html", lambda t, u: admin.settings(engine, t, u))

    @app.get("/ui/access", response_class=HTMLResponse, include_in_schema=False)
    def access_page(request: Request, thread: str | None = None) -> HTMLResponse:
        def query(t: str, u: str) -> dict[str, Any]:
            if not thread:
                return {"thread": None, "timeline": chart([])}
            try:  # the asker is an admin (checked before): they may learn the id is unknown
                history = audit.thread_access_history(engine, t, u, thread)
            except NotFound:
                return {"thread": thread, "unknown": True, "timeline": chart([])}
            return {"thread": thread, "timeline": chart(history)}

        return admin_page(request, "access.html", query)

    @app.get("/ui/explain", response_class=HTMLResponse, include_in_schema=False)
    def explain_page(request: Request, thread: str, viewer: str) -> HTMLResponse:
        return admin_page(request, "explain.html", lambda t, u: {
            "thread": thread, "explained": audit.explain_for(engine, t, u, viewer, thread)})
