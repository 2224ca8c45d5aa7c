"""E4 from the views' histories (projections.history): every `at` answer — timeline, mailbox,
records, sync status, contact merge, thread, explain — equals the full replay of the tenant's
stream up to that time (`runners.services.engine.replayed`, the reference), for every viewer
and many times, on seeded random histories whose commands often share a domain time, written
incrementally in random chunks with runner restarts and then rebuilt, on the in-memory,
SQLite and PostgreSQL stores. After DeleteUser no `at` answer shows the user's content (L2)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from histories import T0, history

from domain.errors import NotFound
from projections import queries
from projections.ports import ViewReader
from projections.projector import Projector
from projections.rows import PROJECTIONS
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine, replayed

pytestmark = pytest.mark.integration
TENANT = "acme"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "memory":
        opened = Engine.open_in_memory()
    else:
        url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
        opened = open_engine(str(tmp_path / "crm.db"), url)
    yield opened
    opened.close()


def _shared_times(commands: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The commands with runs of them at one domain time (an `at` sees all of its time)."""
    rng = random.Random(seed)
    minute, out = 0, []
    for command in commands:
        if rng.random() < 0.6:
            minute += 1
        out.append({**command, "at": (T0 + timedelta(minutes=minute)).isoformat()})
    return out


def _apply(engine: Engine, commands: list[dict[str, Any]], seed: int) -> None:
    rng = random.Random(seed)
    position = 0
    while position < len(commands):  # incremental, in random chunks, with restarts
        step = rng.randint(1, 12)
        engine.apply_lines([orjson.dumps(c) for c in commands[position:position + step]],
                           now=T0 + timedelta(days=30))
        position += step
        if rng.random() < 0.3:
            engine.projector = Projector()


def _answer(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except NotFound:
        return "NotFound"


def answers(views: ViewReader, users: list[str], records: list[str], threads: list[str],
            mailboxes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for viewer in users:
        out[f"mailbox/{viewer}"] = _answer(queries.mailbox, views, TENANT, viewer)
        out[f"records/{viewer}"] = _answer(queries.records, views, TENANT, viewer)
        out[f"status/{viewer}"] = _answer(queries.sync_status, views, TENANT, viewer)
        for mailbox in mailboxes:
            out[f"status/{viewer}/{mailbox}"] = _answer(queries.sync_status, views, TENANT,
                                                        viewer, mailbox)
        for record in records:
            out[f"timeline/{viewer}/{record}"] = _answer(queries.timeline, views, TENANT,
                                                         viewer, record)
            out[f"contact/{viewer}/{record}"] = _answer(queries.contact, views, TENANT, viewer,
                                                        record)
        for thread in threads:
            out[f"thread/{viewer}/{thread}"] = _answer(queries.thread, views, TENANT, viewer,
                                                       thread)
            out[f"explain/{viewer}/{thread}"] = _answer(queries.explain, views, TENANT, viewer,
                                                        thread)
    return out


def _compare(engine: Engine, minutes: int) -> int:
    state = engine.state(TENANT)
    users, records = sorted(state.users), sorted(state.records)
    threads, mailboxes = sorted(state.threads), sorted(state.mailboxes)
    shown = 0
    for minute in range(-1, minutes + 2):
        for at in (T0 + timedelta(minutes=minute), T0 + timedelta(minutes=minute, seconds=30)):
            want = answers(replayed(engine.stores().events, TENANT, at), users, records, threads,
                           mailboxes)
            got = answers(engine.reader(TENANT, at), users, records, threads, mailboxes)
            for name, answer in want.items():
                assert got[name] == answer, f"{name} at {at}"
                shown += answer not in ("NotFound", [], {})
    return shown


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_e4_every_at_answer_from_the_histories_equals_the_full_replay(engine: Engine,
                                                                      seed: int) -> None:
    commands = _shared_times(history(seed, length=70), seed)
    _apply(engine, commands, seed)
    minutes = int((datetime.fromisoformat(commands[-1]["at"]) - T0).total_seconds() // 60)
    assert _compare(engine, minutes) > 200  # answers that showed something
    live = {p: engine.stores().views.checksum(p) for p in PROJECTIONS}
    engine.rebuild()  # E3: the rebuilt histories answer the same and have the same checksums
    assert {p: engine.stores().views.checksum(p) for p in PROJECTIONS} == live
    _compare(engine, minutes)


def test_l2_no_at_answer_shows_a_deleted_users_content(engine: Engine) -> None:
    at = [(T0 + timedelta(minutes=i)).isoformat() for i in range(8)]
    commands = [
        {"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin",
         "at": at[0]},
        {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member",
         "at": at[0]},
        {"cmd": "ConnectMailbox", "mailbox": "mb1", "user": "mia", "provider": "gmail",
         "address": "mia@acme.test", "at": at[1]},
        {"cmd": "CreateContact", "record": "c1", "owner": "mia", "name": "C", "kind": "person",
         "emails": ["x@ext.test"], "at": at[1]},
        {"cmd": "SyncMessage", "mailbox": "mb1", "at": at[2], "message": {
            "id": "m1", "thread_id": "t1", "from": "x@ext.test", "to": ["mia@acme.test"],
            "subject": "secret subject", "body": "secret body", "sent_at": at[2],
            "labels": ["INBOX"]}},
        {"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "contact",
         "level": "visible", "at": at[3]},
    ]
    engine.apply_lines([orjson.dumps({"tenant": TENANT, **c}) for c in commands],
                       now=T0 + timedelta(days=1))
    before = T0 + timedelta(minutes=4)
    shown = orjson.dumps(engine.query_thread(TENANT, "ada", "mb1:t1", at=before))
    assert b"secret" in shown  # the content shows before the deletion
    engine.apply_lines([orjson.dumps({"tenant": TENANT, "cmd": "DeleteUser", "user": "mia",
                                      "reassign_to": "ada", "at": at[5]})],
                       now=T0 + timedelta(days=1))
    for minute in range(8):
        when = T0 + timedelta(minutes=minute)
        views = engine.reader(TENANT, when)
        found = answers(views, ["ada", "mia"], ["c1"], ["mb1:t1"], ["mb1"])
        assert b"secret" not in orjson.dumps(found), when
        reference = replayed(engine.stores().events, TENANT, when)
        assert found == answers(reference, ["ada", "mia"], ["c1"],
                                ["mb1:t1"], ["mb1"])
    erased = engine.query_thread(TENANT, "ada", "mb1:t1", at=before)
    assert erased["messages"][0]["body"] is None
