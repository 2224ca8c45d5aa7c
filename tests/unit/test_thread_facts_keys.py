"""E3 for the rows of thread-derived keys computed once per thread and time (issues #11/#15):
a thread's keys taken from its facts' links are the keys `thread_keys` names, and its facts'
messages are its live messages in the order the rows show them."""

from __future__ import annotations

import orjson
import pytest
from histories import history

from domain.state import TenantState, evolve
from projections.rows import thread_facts
from projections.touched import keys_of_thread, thread_keys
from runners.services.engine import Engine

TENANT = "acme"


@pytest.mark.parametrize("seed", range(4))
def test_e3_a_threads_keys_from_its_facts_are_its_keys(seed: int) -> None:
    engine = Engine.open_in_memory()
    engine.apply_lines([orjson.dumps(c) for c in history(seed, length=200)])
    state = TenantState(TENANT, index_rfc=False)  # as projections fold it, with content
    for seq, event in engine.events(TENANT):
        evolve(state, event, seq)
    linked = 0
    for tid, thread in state.threads.items():
        facts = thread_facts(state, tid, {})
        if facts is None:
            continue
        assert keys_of_thread(tid, facts.owner, facts.links) == thread_keys(state, tid)
        linked += bool(facts.links)
        order = {mid: i for i, mid in enumerate(thread.messages)}
        live = [m for m in (state.messages[(thread.mailbox, mid)] for mid in thread.messages)
                if not m.deleted]
        assert facts.messages == sorted(live, key=lambda m: (m.sent_at, order[m.id]))
    assert linked  # some thread of the history is linked to a record: the keys were compared
