"""Property test: the auditor queries narrowed to one thread's own events and the records that
could ever be linked to it (issue #11: on PostgreSQL those are read by index) answer exactly
what the fold of every event of the tenant answers.

On the random histories of test_property_visibility, with message deletions (at the provider,
in batches held by the L5 guard and confirmed, from the CRM) and label updates added at random
between the commands: for every thread, `access` at each cut and now, and the whole access
history, are equal whether asked through `runners.services.audit` (what `ThreadScope(thread,
mailbox)` admits, less unrelated records' events) or folded from every event
(`ThreadScope(thread, None)`).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_property_visibility import T0, TENANT, histories, iso

from domain import events as ev
from projections.access import (
    TENANT_WIDE,
    AccessHistory,
    ThreadScope,
    access_answer,
    fold_until,
)
from projections.access_records import (
    ENTANGLING,
    NAMING_KEYS,
    OTHER_KEYS,
    RECORD_EVENTS,
    names,
    names_of_stored,
    related,
)
from runners.services import audit
from runners.services.engine import Engine

AUDITOR = "auditor-9"


def _with_deletions(cmds: list[dict[str, Any]], data: st.DataObject) -> list[dict[str, Any]]:
    """The commands with deletions and updates of already synced messages put in between."""
    out: list[dict[str, Any]] = []
    owners = {c["mailbox"]: c["user"] for c in cmds if c["cmd"] == "ConnectMailbox"}
    synced: list[tuple[str, str]] = []
    for c in cmds:
        out.append(c)
        if c["cmd"] == "SyncMessage":
            synced.append((c["mailbox"], c["message"]["id"]))
        if not synced or not data.draw(st.booleans()):
            continue
        box, mid = data.draw(st.sampled_from(synced))
        kind = data.draw(st.integers(0, 3))
        extra: list[dict[str, Any]]
        if kind == 0:
            extra = [{"cmd": "DeleteMessageAtProvider", "mailbox": box, "id": mid}]
        elif kind == 1:
            ids = sorted({m for b, m in synced if b == box})
            extra = [{"cmd": "DeleteMessagesAtProvider", "mailbox": box, "ids": ids},
                     {"cmd": "ConfirmMailboxDeletions", "mailbox": box,
                      "apply": data.draw(st.booleans())}]
        elif kind == 2:
            extra = [{"cmd": "DeleteMessage", "user": owners.get(box, "u0"), "mailbox": box,
                      "id": mid}]
        else:
            extra = [{"cmd": "UpdateMessage", "mailbox": box, "id": mid, "labels": ["X"]}]
        out += [{**e, "tenant": TENANT} for e in extra]
    # one minute per command, as the histories are
    return [{**c, "at": iso(T0 + timedelta(minutes=i))} for i, c in enumerate(out)]


@settings(
    max_examples=int(os.environ.get("CRMSYNC_PROPERTY_EXAMPLES_ACCESS", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(histories(), st.data())
def test_v11_thread_narrowed_fold_equals_whole_tenant_fold(
    history: tuple[list[dict[str, Any]], list[int]], data: st.DataObject,
) -> None:
    cmds = _with_deletions([*history[0], {"cmd": "AddUser", "tenant": TENANT, "user": AUDITOR,
                                          "email": f"{AUDITOR}@corp.test", "role": "admin"}],
                           data)
    engine = Engine.open_in_memory()
    engine.apply_lines([json.dumps(c) for c in cmds], now=T0 + timedelta(minutes=len(cmds)))
    events = list(engine.events(TENANT))
    threads = {e.thread: e.mailbox for _, e in events
               if isinstance(e, ev.MessageSynced | ev.EmailSent)}
    cuts = [None, *(T0 + timedelta(minutes=m, seconds=30) for m in range(0, len(cmds), 3))]
    for thread, mailbox in sorted(threads.items()):
        for at in cuts:
            whole = fold_until(TENANT, ThreadScope(thread, None), events, at)
            narrow = fold_until(TENANT, ThreadScope(thread, mailbox), events, at)
            want = access_answer(whole[0], thread, whole[1])
            assert access_answer(narrow[0], thread, narrow[1]) == want, (thread, at)
            assert audit.thread_access(engine, TENANT, AUDITOR, thread, at=at) == want, \
                (thread, at)
        every = AccessHistory(TENANT, ThreadScope(thread, None)).feed_all(events).answer()
        assert audit.thread_access_history(engine, TENANT, AUDITOR, thread) == every, thread
    engine.close()


def test_v11_record_narrowing_classifies_every_field_of_the_record_events() -> None:
    """A field added to a record event must be declared naming (records, addresses, threads)
    or not: an undeclared one could name a record the narrowing then leaves out."""
    for kind in RECORD_EVENTS:
        fields = set(kind.model_fields) - {"tenant", "actor", "occurred_at", "correlation_id",
                                           "command_id"}
        assert fields <= NAMING_KEYS | OTHER_KEYS, (kind.__name__, fields - NAMING_KEYS
                                                    - OTHER_KEYS)
    assert not RECORD_EVENTS & ENTANGLING
    assert RECORD_EVENTS | ENTANGLING <= TENANT_WIDE


def test_v11_record_narrowing_keeps_the_deal_of_a_contact_named_later() -> None:
    """The fixpoint: a deal created before its contact gets the thread's address is kept."""
    named = [{"d1", "c1"}, {"c2", "x@y.test"}, {"c1", "a@b.test"}, {"d1"},
             {"c3", "other@z.test"}]
    assert related({"mb1:t1", "A@b.test"}, named) == [True, False, True, True, False]
    assert names({"record": "C1", "fields": {"emails": ["X@Y.test"], "name": "n"},
                  "owner": "u1", "contacts": [["c7"]]}) == {"c1", "x@y.test", "c7"}


_TEXT = st.text(alphabet=st.sampled_from('aB1@."\\\x00é:-'), max_size=6)
_VALUE = st.recursive(st.none() | _TEXT, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from([*sorted(NAMING_KEYS), "name", "x"]),
                                        inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from([*sorted(NAMING_KEYS), "owner", "fields", "_chain"]),
                       _VALUE, max_size=5))
def test_v11_names_read_from_stored_bytes_equal_the_parsed_ones(payload: dict[str, Any]) -> None:
    """The byte reading of what a record event names either declines or agrees with parsing."""
    found = names_of_stored(orjson.dumps(payload))
    assert found is None or found == names(payload)
