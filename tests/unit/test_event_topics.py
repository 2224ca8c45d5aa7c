"""E7 and the stored log: an event's topic (the class the store decodes it as, and part of its
hash-chain link) stays `domain.events:<Event>` although the classes are defined by area
(issue #12), so logs written before the split read, scan and chain the same."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from eventsourcing.utils import get_topic, resolve_topic

from domain import events as ev


def test_e7_every_event_topic_names_domain_events_whatever_module_defines_it() -> None:
    topics = {kind: get_topic(kind) for kind in ev.EVENT_TYPES}
    assert topics == {kind: f"domain.events:{kind.__name__}" for kind in ev.EVENT_TYPES}
    assert all(resolve_topic(topic) is kind for kind, topic in topics.items())


def test_e7_a_topic_stored_before_the_split_resolves_to_the_same_class() -> None:
    assert resolve_topic("domain.events:MessageSynced") is ev.MessageSynced
    assert resolve_topic("domain.events:ContactsMerged") is ev.ContactsMerged


def test_events_and_the_message_they_carry_pickle_under_domain_events() -> None:
    message = ev.MailMessage.model_validate({
        "id": "m1", "from": "a@x.example", "to": ["b@x.example"], "subject": "s",
        "sent_at": datetime(2026, 1, 1, tzinfo=UTC)})
    event = ev.MessageSynced(tenant="t", actor="a", occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                             correlation_id="c", mailbox="mb", thread="th", message=message)
    raw = pickle.dumps(event)
    assert b"domain.events" in raw
    assert pickle.loads(raw) == event
