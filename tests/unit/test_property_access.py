"""Property test: the auditor queries (SPEC §7, V11) against the independent reference model.

On the random histories of test_property_visibility, for every thread: the access history's
intervals, read at the moment between any two commands, name exactly the users whom the model
lets see the thread then (the model's thread query answers); and the access query at the cuts
and now says `visible` for exactly those users. Both are asked by an admin added last.

CRMSYNC_PROPERTY_EXAMPLES_ACCESS sets the number of histories (default 60).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

import reference_model as ref
from hypothesis import HealthCheck, given, settings
from test_property_visibility import T0, TENANT, histories, iso

from domain.errors import NotFound
from runners.services import audit
from runners.services.engine import Engine

AUDITOR = "auditor-9"


def _model_sees(model: ref.Model, thread: str) -> set[str]:
    seen = set()
    for user in model.users:
        try:
            ref.thread(model, user, thread)
        except ref.ModelNotFoundError:
            continue
        seen.add(user)
    return seen


def _in_intervals(entry: dict[str, Any], when: datetime) -> bool:
    for interval in entry["intervals"]:
        start = datetime.fromisoformat(interval["from"])
        end = datetime.fromisoformat(interval["to"]) if interval["to"] else None
        if start <= when and (end is None or when < end):
            return True
    return False


@settings(
    max_examples=int(os.environ.get("CRMSYNC_PROPERTY_EXAMPLES_ACCESS", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(histories())
def test_v11_access_and_access_history_match_reference_model(
    history: tuple[list[dict[str, Any]], list[int]],
) -> None:
    cmds, cuts = history
    cmds = [*cmds, {"cmd": "AddUser", "tenant": TENANT, "user": AUDITOR,
                    "email": f"{AUDITOR}@corp.test", "role": "admin",
                    "at": iso(T0 + timedelta(minutes=len(cmds)))}]
    engine = Engine.open_in_memory()
    report = engine.apply_lines([json.dumps(c) for c in cmds],
                                now=T0 + timedelta(minutes=len(cmds)))
    rejected = {int(r[0]) for r in report.rejected}
    assert len(cmds) not in rejected, report.rejected
    model = ref.Model()
    seen_after: list[dict[str, set[str]]] = []  # per command: thread -> users who see it
    for i, c in enumerate(cmds):
        ref.apply(model, c, engine_ok=i + 1 not in rejected)
        seen_after.append({t: _model_sees(model, t) for t in model.threads})
    dump = "\n".join(json.dumps(c) for c in cmds)
    checked = 0
    for thread in sorted(model.threads):
        answer = audit.thread_access_history(engine, TENANT, AUDITOR, thread)
        entries = {e["user"]: e for e in answer}
        assert set(entries) == set(model.users), dump
        for i, seen in enumerate(seen_after):
            when = T0 + timedelta(minutes=i, seconds=30)
            got = {u for u, e in entries.items() if _in_intervals(e, when)}
            assert got == seen.get(thread, set()), (
                f"access-history {thread} at {when}: {sorted(got)} != model "
                f"{sorted(seen.get(thread, set()))}\n{json.dumps(answer)}\n{dump}")
            checked += 1
        for i in [*cuts, None]:
            when = None if i is None else T0 + timedelta(minutes=i, seconds=30)
            want = seen_after[-1 if i is None else i].get(thread, set())
            rows = audit.thread_access(engine, TENANT, AUDITOR, thread, at=when)
            got = {r["user"] for r in rows if r["visible"]}
            assert got == want, f"access {thread} at {when}: {sorted(got)} != {sorted(want)}"
            assert all(r["rule"] for r in rows)
    for thread in ["mb0:nope", *sorted(model.threads)[:1]]:
        for call in (audit.thread_access_history, audit.thread_access):
            try:
                call(engine, TENANT if thread == "mb0:nope" else "globex", AUDITOR, thread)
            except NotFound:
                continue
            raise AssertionError(f"{call.__name__} {thread}: not NotFound")
    assert checked == len(model.threads) * len(cmds)
