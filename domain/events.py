"""Domain events: immutable, past tense, one class per kind of change (SPEC E1, E2).

Every event carries the envelope fields of E2 (tenant, actor, occurred_at, correlation_id) and the
`command_id` of the command that caused it, so idempotency (E5) is a pure function of the log.
The classes are defined by area (`event_base`, `record_events`, `mail_events`, `audit_events`,
`contact_events`) and read together here, as `ev.<Event>`.
"""

from __future__ import annotations

from domain import audit_events, contact_events, mail_events, record_events
from domain.audit_events import *  # noqa: F403
from domain.contact_events import *  # noqa: F403
from domain.event_base import *  # noqa: F403
from domain.event_base import Attachment, DomainEvent, MailMessage
from domain.mail_events import *  # noqa: F403
from domain.mail_events import RefusedAttachment
from domain.record_events import *  # noqa: F403

EVENT_TYPES: tuple[type[DomainEvent], ...] = (
    *record_events.EVENTS, *mail_events.EVENTS, *audit_events.EVENTS, *contact_events.EVENTS)

# A stored event's topic is `domain.events:<class>` (eventsourcing's get_topic: the class's
# module and name), and the hash chain (E7) and the store's scans cover it: the classes keep
# this module's name wherever they are defined, so the log reads, scans and chains as before.
for _kind in (*EVENT_TYPES, DomainEvent, MailMessage, Attachment, RefusedAttachment):
    _kind.__module__ = __name__
