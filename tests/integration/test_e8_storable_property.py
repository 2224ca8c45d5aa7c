"""E8 property: whatever a caller or a provider sends, every event the engine then stores (the
accepted command's events, or the rejection's record) can be stored faithfully as JSON in
PostgreSQL (`jsonb`, which refuses NUL and lone surrogates) and SQLite, and projecting it sticks
no tenant."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runners.services.engine import Engine

pytestmark = pytest.mark.integration
T = "acme"
TRICKY = ["\x00", "\t", "\n", "\r", "\x01", "\x1f", "\x7f", "\x85", "\ud800", "\udfff", "é",
          "\u2028", "\ufeff", "\U0001f600", "@", ":", " "]
text = st.one_of(
    st.text(alphabet=st.characters(categories=["L", "N"]), max_size=8),  # mostly accepted
    st.lists(st.one_of(st.characters(), st.sampled_from(TRICKY)), max_size=12).map("".join))
ids = st.one_of(st.sampled_from(["lead-1", "m1", "mb", "ada", "t1"]), text)


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["SyncMessage", "CreateLead", "UpdateContact", "AddUser",
                                 "LinkThread", "CreateContact"]))
    if kind == "SyncMessage":
        message = {"id": draw(ids), "from": draw(text), "to": draw(st.lists(text, max_size=3)),
                   "subject": draw(text), "body": draw(text),
                   "sent_at": "2026-01-01T00:00:00Z", "labels": draw(st.lists(text, max_size=2)),
                   "thread_id": draw(st.one_of(st.none(), ids)),
                   "attachments": draw(st.lists(st.fixed_dictionaries({
                       "name": text, "size": st.integers(min_value=0, max_value=2**64),
                       "content_type": text}), max_size=1))}
        return {"cmd": kind, "mailbox": "mb", "message": message}
    if kind == "CreateLead":
        return {"cmd": kind, "record": draw(ids), "owner": "ada", "name": draw(text),
                "emails": draw(st.lists(text, max_size=2))}
    if kind == "CreateContact":
        return {"cmd": kind, "record": draw(ids), "owner": "ada", "name": draw(text),
                "kind": "person", "emails": draw(st.lists(text, max_size=2))}
    if kind == "UpdateContact":
        return {"cmd": kind, "record": "c-1", "fields": draw(st.dictionaries(
            text, st.one_of(text, st.integers(), st.lists(text, max_size=2)), max_size=3))}
    if kind == "LinkThread":
        return {"cmd": kind, "user": "ada", "thread": draw(ids), "record": "lead-1"}
    return {"cmd": kind, "user": draw(ids), "email": draw(text) + "@x.test", "role": "member"}


def test_e8_every_stored_event_fits_postgres_jsonb_and_sqlite(postgres_url: str,
                                                             tmp_path: Path) -> None:
    engine = Engine.open_in_memory()
    setup = [{"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
             {"cmd": "ConnectMailbox", "mailbox": "mb", "user": "ada", "provider": "gmail",
              "address": "ada@acme.test"},
             {"cmd": "CreateContact", "record": "c-1", "owner": "ada", "name": "C",
              "kind": "person", "emails": ["c@x.test"]}]
    assert not engine.apply_lines([json.dumps({"tenant": T, **x}) for x in setup]).rejected
    lite = sqlite3.connect(tmp_path / "events.db")
    lite.execute("CREATE TABLE e (doc TEXT NOT NULL)")
    seen = [engine.head()]
    counts = {"accepted": 0, "rejected": 0, "events": 0}
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        pg.execute("CREATE TABLE e (doc jsonb NOT NULL, raw text NOT NULL)")

        @settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(commands())
        def check(raw: dict[str, Any]) -> None:
            report = engine.apply_lines([json.dumps({"tenant": T, **raw})])
            counts["accepted" if not report.rejected else "rejected"] += 1
            stored = engine.read_log(seen[0], 1000)
            seen[0] = engine.head()
            counts["events"] += len(stored)
            for item in stored:
                doc = orjson.dumps(item.event.model_dump(by_alias=True))  # as the mapper does
                back = pg.execute("INSERT INTO e VALUES (%s::jsonb, %s) RETURNING doc::text",
                                  (doc.decode(), doc.decode())).fetchone()
                assert back is not None and orjson.loads(back[0]) == orjson.loads(doc)
                kept = lite.execute("INSERT INTO e VALUES (?) RETURNING doc",
                                    (doc.decode(),)).fetchone()
                assert kept is not None and orjson.loads(kept[0]) == orjson.loads(doc)
            assert engine.stuck() == {}, "an accepted command stuck its tenant"

        check()
    lite.close()
    assert counts["accepted"] > 10 and counts["rejected"] > 10, counts
    assert counts["events"] >= counts["accepted"], counts
