"""Our pydantic events as eventsourcing stores them: orjson JSON that pydantic validates back
into the event class named by the stored topic, so datetimes and UUIDs round-trip typed.

What is stored per event is one JSON object, with two fields of ours in front:
- `_chain` (E7): the event's link in its tenant's hash chain (adapters.eventstore.chain).
- `_sealed` (L2), on events that carry mail content (subject, body, attachment names): the
  content encrypted under its owner's data key (adapters.eventstore.content_keys), as one string:
  base64url(owner) "." base64(nonce + ciphertext). The event's own content fields hold the
  erased placeholder (`domain.events.ERASED`), so an event whose key is destroyed decodes as
  erased and everything downstream (state, views, answers at any `at`) shows it erased
  (adapters.eventstore.seal).
eventsourcing's whole-event cipher and compressor, when configured, wrap all of that.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import TopicError, get_topic, resolve_topic

from adapters.errors import StoreError
from adapters.eventstore.chain import CHAIN_END, CHAIN_HEAD, chain_link
from adapters.eventstore.content_keys import ContentKeys
from adapters.eventstore.seal import SEALED_KEY, SEALED_KINDS, opened, seal_values, with_sealed
from adapters.eventstore.synced_decode import decode_plain, decode_synced
from domain import events as ev
from domain.events import DomainEvent
from domain.state import SyncedMessage

SYNCED_TOPIC = get_topic(ev.MessageSynced)


@dataclass(frozen=True)
class EventEnvelope:
    """An event as the library stores it: our event plus its stream id and version."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    event: DomainEvent


class PydanticMapper(Mapper[UUID]):
    """Maps EventEnvelope <-> StoredEvent with orjson; pydantic restores the types. Content is
    sealed with its owner's key (`keys`, set by the EventStore) and every event is chained."""

    keys: ContentKeys | None = None
    # Only benchmarks.content_cost turns this off, to measure the same workload without
    # sealing in the same run; nothing else may (L2: content is never stored in plaintext).
    seal = True

    def encode(self, envelope: EventEnvelope, owner: str | None, prev: str
               ) -> tuple[StoredEvent, str]:
        """The stored event and its chain link. `owner`: whose key seals the content."""
        event = envelope.event
        kind = type(event)
        doc = event.model_dump(by_alias=True)
        box = None
        if self.seal and isinstance(event, SEALED_KINDS) \
                and (values := seal_values(doc, kind)) is not None:
            if owner is None or self.keys is None:
                raise StoreError(f"cannot store {kind.__name__}: no owner or content keys to "
                                 "seal its content with")
            box = self.keys.seal(event.tenant, owner, values)
        topic = get_topic(kind)
        body = orjson.dumps(doc)
        if box is not None:
            body = with_sealed(body, cast(str, owner), box)
        link = chain_link(prev, topic, envelope.originator_version, body)
        state = CHAIN_HEAD + link.encode() + b'",' + body[1:]
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(originator_id=envelope.originator_id,
                           originator_version=envelope.originator_version,
                           topic=topic, state=state), link

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """The library's path (Application.save): only for events without content, and it
        cannot chain; the EventStore appends through `encode`."""
        raise StoreError("append through EventStore: events are sealed and chained there")

    def to_fold(self, stream: UUID, version: int, topic: str, state: bytes,
                content: bool = True) -> DomainEvent | SyncedMessage:
        """What the fold reads of a stored event: a MessageSynced in the form this mapper
        writes decoded straight into the fold's record (adapters.eventstore.synced_decode),
        without its content unless `content` (`TenantState.message_content`: its sealed
        subject is then not opened), anything else into its event."""
        if topic == SYNCED_TOPIC and not (self.cipher or self.compressor):
            try:
                found = decode_plain(state, self.keys, content)
                if found is None:
                    start = CHAIN_END + 2 if state.startswith(CHAIN_HEAD) else 1
                    found = decode_synced(state, start, self.keys, content)
            except Exception:  # a broken seal: the model refuses it below, with its error
                found = None
            if found is not None:
                return found
        stored = StoredEvent(originator_id=stream, originator_version=version, topic=topic,
                             state=state)
        return cast(EventEnvelope, self.to_domain_event(stored)).event

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            # past the chain link, without copying: where the event's own JSON goes on
            start = CHAIN_END + 2 if state.startswith(CHAIN_HEAD) else 1
            cls: type[DomainEvent] = resolve_topic(stored_event.topic)
            if state.startswith(SEALED_KEY, start):
                event = cls.model_validate_json(opened(state, start, cls, self.keys))
            else:
                event = cls.model_validate_json(state if start == 1 else b"{" + state[start:])
        except StoreError:
            raise
        except Exception as exc:
            raise MapperDeserialisationError(
                f"cannot decode event {stored_event.topic} "
                f"v{stored_event.originator_version}: {exc}"
            ) from exc
        originator = stored_event.originator_id
        return EventEnvelope(originator if isinstance(originator, UUID) else UUID(originator),
                             stored_event.originator_version, event.occurred_at, event)


@functools.lru_cache(maxsize=256)
def event_class(topic: str) -> type[DomainEvent]:
    """The event class a stored topic names (a topic that names anything else is refused)."""
    kind = resolve_topic(topic)
    if not (isinstance(kind, type) and issubclass(kind, DomainEvent)):
        raise TopicError(f"{topic!r} is not an event class")
    return kind
