"""A synced message whose sealed content does not open (its box changed in the store): the
command side, which keeps no message content and opens no seal (issue #15, stop 22), goes on
deciding for the tenant; every reader of content (the projections' decoding, exports) refuses
the event as before, and the chain check finds the changed bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from secret_mail import T0, TENANT, secret_mail

from adapters.errors import StoreError
from adapters.eventstore.store import EventStore
from domain import events as ev
from domain.commands import parse_command
from domain.decide import decide


def _change_the_box(db: Path, table: str) -> None:
    """One character of event 3's sealed box, swapped for another base64 character: the
    stored form stays canonical, the seal no longer opens."""
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute(f"SELECT state FROM {table} WHERE originator_version = 3"
                                ).fetchone()
        at = state.index(b'"_sealed":"')
        at = state.index(b".", at) + 5
        changed = state[:at] + (b"A" if state[at:at + 1] != b"A" else b"B") + state[at + 1:]
        conn.execute(f"UPDATE {table} SET state = ? WHERE originator_version = 3", (changed,))


def test_l2_a_seal_that_does_not_open_stops_no_command_and_every_content_reader_refuses_it(
        tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    store = EventStore.sqlite(str(db))
    store.append_raw(TENANT, 0, secret_mail())
    assert list(store.tenant_events(TENANT))[2][1].message.subject == "secret-subject-1"
    table = store.app.recorder.events_table_name  # type: ignore[attr-defined]
    store.close()
    _change_the_box(db, table)

    store = EventStore.sqlite(str(db))
    try:
        state = store.state(TENANT)  # opens nothing: folds the message as it is
        assert state.seq == 3 and state.messages[("mb", "m1")].rfc_id == "<m1@x.test>"
        # a command still decides on it: the same message synced again is a duplicate (S14)
        again = parse_command({"cmd": "SyncMessage", "tenant": TENANT, "mailbox": "mb",
                               "at": "2026-01-01T00:01:00+00:00", "message": {
                                   "id": "m1", "from": "a@x.test", "to": ["u@x.test"],
                                   "subject": "s", "sent_at": "2026-01-01T00:00:00+00:00"}})
        assert not any(isinstance(e, ev.MessageSynced)
                       for e in decide(state, again, now=T0, correlation_id="c2"))
        with pytest.raises(StoreError, match="does not open"):  # what projections read
            list(store.tenant_events(TENANT))
        check = store.verify_log(TENANT)
        assert check.failure is not None  # the chain finds the changed bytes
    finally:
        store.close()
