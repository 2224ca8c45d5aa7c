"""The admin queries of SPEC §7 (issue #14): problems (the attention list) and settings, for
active admins only (V12: anyone else gets "not found"). In-memory engine, no I/O."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from admin_story import END, STORY, lines

from domain.errors import NotFound
from runners.services import admin
from runners.services.engine import Engine

HOUR = timedelta(hours=1)


@pytest.fixture
def engine() -> Engine:
    engine = Engine.open_in_memory()
    report = engine.apply_lines(lines())
    assert report.applied == len(STORY), report.rejected
    return engine


def kinds(found: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(p["kind"], p.get("dead_letter") or p["mailbox"]) for p in found}


def later(engine: Engine, commands: list[dict[str, Any]], minute: int = 0) -> None:
    at = END + timedelta(minutes=minute)
    report = engine.apply_lines([orjson.dumps({"tenant": "acme", "at": (at + i * HOUR / 60)
                                               .isoformat(), **c})
                                 for i, c in enumerate(commands)])
    assert report.applied == len(commands), report.rejected


def test_s7_problems_name_each_problem_with_since_and_resolution(engine: Engine) -> None:
    found = admin.problems(engine, "acme", "ada", now=END + HOUR)
    assert kinds(found) == {("suspect", "mb1"), ("gone", "mb2"), ("disconnected", "mb3"),
                            ("refused", "mb4"), ("dead_letter", "dl-1"),
                            ("dead_letter", "dl-2")}  # dl-3 was replayed
    by_kind = {(p["kind"], p.get("dead_letter") or p["mailbox"]): p for p in found}
    suspect = by_kind[("suspect", "mb1")]
    assert suspect["held_deletions"] == ["a1", "a2", "a3"]
    assert suspect["since_event"]["type"] == "MessageDeletionHeld"
    assert suspect["resolve"].startswith('ConfirmMailboxDeletions {"mailbox": "mb1"')
    assert by_kind[("gone", "mb2")]["since_event"]["type"] == "MailboxReportedGone"
    assert by_kind[("disconnected", "mb3")]["resolve"] == 'ReconnectMailbox {"mailbox": "mb3"}'
    assert "dl-2" in by_kind[("refused", "mb4")]["resolve"]
    assert by_kind[("dead_letter", "dl-1")]["resolve"] == "crmsync deadletters replay dl-1"
    # since when: each problem's time is the domain time of the event that started it
    assert all(p["since"] == p["since_event"]["occurred_at"] for p in found)
    assert [p["since"] for p in found] == sorted(p["since"] for p in found)


def test_s7_problems_stale_sync_is_measured_against_now(engine: Engine) -> None:
    fresh = admin.problems(engine, "acme", "ada", now=END + 23 * HOUR)
    stale = admin.problems(engine, "acme", "ada", now=END + 25 * HOUR)
    assert not any(p["kind"] == "stale" for p in fresh)
    # mb1 synced last at minute 14; mb4 never synced since it was connected; mb2 gone and mb3
    # disconnected are not stale (they are listed as such)
    assert {p["mailbox"] for p in stale if p["kind"] == "stale"} == {"mb1", "mb4"}
    short = admin.problems(engine, "acme", "ada", now=END + HOUR, stale_seconds=60)
    assert {p["mailbox"] for p in short if p["kind"] == "stale"} == {"mb1", "mb4"}
    never = admin.problems(engine, "acme", "ada", now=END + HOUR, stale_seconds=10**30)
    assert not any(p["kind"] == "stale" for p in never)  # clamped, no overflow


def test_s7_problems_end_with_the_commands_that_resolve_them(engine: Engine) -> None:
    later(engine, [
        {"cmd": "ConfirmMailboxDeletions", "mailbox": "mb1", "apply": False},
        {"cmd": "ReconnectMailbox", "mailbox": "mb2"},
        {"cmd": "ReconnectMailbox", "mailbox": "mb3"},
        {"cmd": "AdvanceMailboxCursor", "mailbox": "mb4", "cursor": "h-9"},  # accepted again
        {"cmd": "RecordDeadLetterReplay", "dead_letter_id": "dl-1", "delivery_id": "d1"},
        {"cmd": "RecordDeadLetterReplay", "dead_letter_id": "dl-2", "delivery_id": "d2"},
    ])
    assert admin.problems(engine, "acme", "ada", now=END + HOUR) == []


def test_s7_problems_of_an_inactive_users_mailbox_are_only_held_deletions(
        engine: Engine) -> None:
    later(engine, [{"cmd": "DeactivateUser", "user": "mia"},
                   {"cmd": "DeactivateUser", "user": "leo"}])
    found = admin.problems(engine, "acme", "ada", now=END + 48 * HOUR)
    assert {k for k in kinds(found) if k[1] in ("mb1", "mb2")} == {("suspect", "mb1")}


def test_s7_settings_show_configuration_users_levels_and_shares(engine: Engine) -> None:
    answer = admin.settings(engine, "acme", "ada")
    assert answer["configuration"]["bcc_address"] == "drop@acme.test"
    assert answer["configuration"]["mass_delete_threshold"] == 0.5
    users = {u["user"]: u for u in answer["users"]}
    assert {u: (v["role"], v["manager"], v["status"]) for u, v in users.items()} == {
        "ada": ("admin", None, "active"), "max": ("manager", None, "active"),
        "mia": ("member", "max", "active"), "leo": ("member", None, "active"),
        "ivy": ("admin", None, "deactivated")}
    assert {t: v["level"] for t, v in users["mia"]["levels"].items()} == {"lead": "visible"}
    assert [(s["record"], s["address"], s["setting"]) for s in users["mia"]["address_shares"]
            ] == [("l1", "o@x.test", "shared")]
    assert users["mia"]["address_shares"][0]["event"]["type"] == "AddressSettingChanged"
    assert sum(len(u["address_shares"]) for u in answer["users"]) == 1


@pytest.mark.parametrize("viewer", ["max", "mia", "ivy", "nobody"])
def test_v12_admin_queries_are_not_found_for_anyone_but_active_admins(
        engine: Engine, viewer: str) -> None:
    with pytest.raises(NotFound):
        admin.problems(engine, "acme", viewer)
    with pytest.raises(NotFound):
        admin.settings(engine, "acme", viewer)
    with pytest.raises(NotFound):
        admin.settings(engine, "other", "ada")


def test_v11_access_chart_draws_a_bar_per_interval_coloured_by_rule(engine: Engine) -> None:
    from adapters.http.ui import CHART, RULE_COLOURS, chart
    from runners.services import audit

    history = audit.thread_access_history(engine, "acme", "ada", "mb1:t1")
    drawn = chart(history)
    assert [r["entry"]["user"] for r in drawn["rows"]] == [e["user"] for e in history]
    intervals = sum(len(e["intervals"]) for e in history)
    bars = [b for r in drawn["rows"] for b in r["bars"]]
    assert len(bars) == intervals > 0
    right = CHART["width"] - 20
    for bar in bars:
        assert CHART["label"] <= bar["x"] and bar["x"] + bar["width"] <= right + 0.5
        assert bar["colour"] == RULE_COLOURS[bar["interval"]["rule"]]
    open_bars = [b for b in bars if b["interval"]["to"] is None]
    assert open_bars and all(abs(b["x"] + b["width"] - right) < 0.5 for b in open_bars)
    assert chart([])["rows"] == []
