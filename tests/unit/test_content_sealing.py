"""L2 sealing in the mapper, in memory: content round-trips exactly whatever it holds, is absent
from the stored bytes, and reads back as erased once the owner's key is destroyed. E7: the
stored link covers every byte."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.eventstore.store import EventStore, chain_link, split_chain, stream_id
from domain import events as ev

T = datetime(2026, 1, 1, tzinfo=UTC)
TRICKY = ['Re: "subject":"\\u0000erased" \\ "', '"body":"" {"name":"x"} ü €', "a\nb\tc"]


def envelope(kind: type[ev.DomainEvent], **fields: object) -> ev.DomainEvent:
    return kind(tenant="t\"1", actor="system:test", occurred_at=T, correlation_id="c", **fields)


def history() -> list[ev.DomainEvent]:
    message = ev.MailMessage.model_validate({
        "id": "m1", "from": "a@x.test", "to": ["b@x.test"], "subject": TRICKY[0],
        "body": TRICKY[1], "sent_at": T.isoformat(),
        "attachments": [{"name": TRICKY[2], "size": 1, "content_type": "text/plain"},
                        {"name": "second.pdf", "size": 2, "content_type": "application/pdf"}]})
    return [
        envelope(ev.UserAdded, user="u", email="u@x.test", role="member"),
        envelope(ev.MailboxConnected, mailbox="mb", user="u", provider="gmail",
                 address="u@x.test", scope={}, backfill_days=30, credentials_set=False),
        envelope(ev.MessageSynced, mailbox="mb", thread="mb:t", message=message,
                 refused=[ev.RefusedAttachment(name="virus-Quokka.exe", size=9,
                                               content_type="application/x-msdownload",
                                               reason="type_not_allowed: Quokka"),
                          ev.RefusedAttachment(name=TRICKY[0], size=5, content_type="text/x",
                                               reason=f"too_large: {TRICKY[1]}")]),
        envelope(ev.AttachmentRejected, mailbox="mb", id="m1", attachment=TRICKY[2],
                 reason=f"too_large: {TRICKY[2]}"),
        envelope(ev.MessageSkipped, mailbox="mb", id="m2",
                 reason=f"attachment_not_allowed: {TRICKY[0]}"),
        envelope(ev.MessageSkipped, mailbox="mb", id="m3", reason="user_deactivated"),
    ]


def test_l2_content_round_trips_exactly_and_is_not_in_the_stored_bytes() -> None:
    store = EventStore.in_memory()
    events = history()
    store.append_raw('t"1', 0, events)
    assert [e for _, e in store.tenant_events('t"1')] == events
    stored = b"".join(s.state for s in store.app.recorder.select_events(stream_id('t"1')))
    for text in [TRICKY[2], "second.pdf", "too_large", "Quokka"]:
        assert text.encode() not in stored
    assert b"user_deactivated" in stored  # not content: stays readable


def test_l2_destroyed_key_reads_as_erased_and_e7_link_covers_the_bytes() -> None:
    store = EventStore.in_memory()
    store.append_raw('t"1', 0, history())
    store.erase_user('t"1', "u", T)
    read = [e for _, e in store.tenant_events('t"1')]
    synced = read[2]
    assert isinstance(synced, ev.MessageSynced)
    assert (synced.message.subject, synced.message.body) == (ev.ERASED, "")
    assert [a.name for a in synced.message.attachments] == [ev.ERASED, ev.ERASED]
    assert [a.size for a in synced.message.attachments] == [1, 2]  # the facts stay
    assert [(a.name, a.size) for a in synced.refused] == [(ev.ERASED, 9), (ev.ERASED, 5)]
    assert not any("Quokka" in a.reason for a in synced.refused)
    rejected, skipped = read[3], read[4]
    assert isinstance(rejected, ev.AttachmentRejected) and rejected.attachment == ev.ERASED
    assert isinstance(skipped, ev.MessageSkipped) and TRICKY[0] not in skipped.reason
    assert store.verify_log('t"1').failure is None
    first = store.app.recorder.select_events(stream_id('t"1'))[0]
    link, body = split_chain(first.state)
    assert link == chain_link("0" * 64, first.topic, 1, body)
    assert link != chain_link("0" * 64, first.topic, 1, body.replace(b"u@x", b"v@x"))
