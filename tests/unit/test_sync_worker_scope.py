"""ChangeMailboxScope in the sync worker (issue #13, S1): a Gmail watch made for the labels of
the earlier scope is made again for the new ones; a Graph subscription (all messages, whatever
the scope) stays. In-memory engine, the hand-written fake providers of the push tests."""

from __future__ import annotations

from datetime import timedelta

from test_sync_worker_push import ADDRESS, command, of, push_of, setup

from domain import events as ev


def test_s1_a_scope_change_makes_the_gmail_watch_again_with_the_new_labels() -> None:
    engine, sources, worker, clock = setup("gmail", {"mode": "labels", "labels": ["Label_7"]})
    worker.catch_up()
    (first,) = worker.maintain_push()
    assert first.push == "created"
    assert not [o for o in worker.maintain_push() if o.push]  # nothing due
    clock.now += timedelta(minutes=5)
    command(engine, clock, {"cmd": "ChangeMailboxScope", "mailbox": "mbx",
                            "scope": {"mode": "labels", "labels": ["Label_7", "Label_9"]}})
    (outcome,) = worker.maintain_push()
    assert outcome.push == "created"
    newest = of(engine, ev.PushSubscriptionCreated)[-1]
    assert newest.reason == "scope_changed"
    targets = sources.push(ADDRESS, gmail=True).targets
    assert [t.labels for t in targets] == [("Label_7",), ("Label_7", "Label_9")]
    assert push_of(engine).scope == {"mode": "labels", "labels": ["Label_7", "Label_9"]}
    assert not [o for o in worker.maintain_push() if o.push]  # nothing more to do


def test_s1_a_scope_change_keeps_the_graph_subscription() -> None:
    engine, _, worker, clock = setup("outlook")
    worker.catch_up()
    worker.maintain_push()
    clock.now += timedelta(minutes=5)
    command(engine, clock, {"cmd": "ChangeMailboxScope", "mailbox": "mbx",
                            "scope": {"mode": "labels", "labels": ["Inbox"]}})
    assert not [o for o in worker.maintain_push() if o.push]
    assert len(of(engine, ev.PushSubscriptionCreated)) == 1
