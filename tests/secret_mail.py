"""A user, their mailbox and mail whose subjects must not outlive the user's erasure, nor be
read where no rule needs them: events built straight (no commands) for the L2 tests against
the event store and its snapshots."""

from __future__ import annotations

from datetime import UTC, datetime

from domain import events as ev

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TENANT = "acme"


def head(kind: type[ev.DomainEvent], **fields: object) -> ev.DomainEvent:
    return kind(tenant=TENANT, actor="system:test", occurred_at=T0, correlation_id="c", **fields)


def secret_mail(messages: int = 1) -> list[ev.DomainEvent]:
    """User `u` (seq 1), mailbox `mb` (seq 2) and `messages` messages m1, m2… (seq 3…) in
    thread `mb:a`: subject `secret-subject-N`, body `secret-body`, Message-ID `<mN@x.test>`."""
    return [
        head(ev.UserAdded, user="u", email="u@x.test", role="member"),
        head(ev.MailboxConnected, mailbox="mb", user="u", provider="gmail",
             address="u@x.test", scope={}, backfill_days=30, credentials_set=False),
        *(head(ev.MessageSynced, mailbox="mb", thread="mb:a", message=ev.MailMessage(
            id=f"m{n}", message_id=f"<m{n}@x.test>", from_="a@x.test", to=["u@x.test"],
            subject=f"secret-subject-{n}", body="secret-body", sent_at=T0))
          for n in range(1, messages + 1))]


def erasure() -> list[ev.DomainEvent]:
    """What a DeleteUser of `u` appends."""
    return [head(ev.UserDeleted, user="u"), head(ev.UserContentErased, user="u")]
