"""Which record events one thread's access fold needs: those of the records that could ever be
linked to the thread, closed over the events that tie records and addresses together (issue #11).

Pure. A record matters to thread T's visibility only through links(T) (its addresses among T's
participants, a deal of such a contact, a manual link to T) and what decides a linked record's
padlock (its owner, collaborators, settings; a deal's contacts' settings, V5). Each event of the
`RECORD_EVENTS` classes names records, addresses or threads in its `NAMING_KEYS` fields; starting
from T and every address T's messages ever had, an event naming anything known is kept and what it
names becomes known, until nothing changes. Then every kept record has all its events, every
address that could link T has all the records that ever held it, and a record left out could
never be linked to T. The folds of contact sync and merges follow records through external ids:
a stream holding any `ENTANGLING` event is not narrowed (every record event is folded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from domain import events as ev

RECORD_EVENTS: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.LeadCreated, ev.ContactCreated, ev.ContactUpdated, ev.DealCreated, ev.DealStageChanged,
    ev.DealContactLinked, ev.DealContactUnlinked, ev.RecordOwnerChanged, ev.CollaboratorAdded,
    ev.CollaboratorRemoved, ev.ThreadLinked, ev.ThreadUnlinked, ev.AddressSettingChanged,
})
ENTANGLING: frozenset[type[ev.DomainEvent]] = frozenset({
    ev.ContactsMerged, ev.ContactUnmerged, ev.ExternalContactSynced, ev.ExternalContactDeleted,
    ev.ExternalCategoryRenamed, ev.ContactSyncConnected,
})
# Fields (at any depth: ContactUpdated's `fields.emails`) that name a record, address or thread.
NAMING_KEYS = frozenset({"record", "deal", "contact", "contacts", "emails", "address", "thread"})
# The other fields of RECORD_EVENTS: a new field must be put in one list or the other (a test
# checks), or the narrowing could drop an event it needs.
OTHER_KEYS = frozenset({
    "tenant", "actor", "occurred_at", "correlation_id", "command_id", "owner", "name", "kind",
    "customer_status", "via", "stage", "previous_owner", "user", "setting", "cause", "fields",
})


def _strings(values: list[Any]) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            yield value.lower()
        elif isinstance(value, list):
            yield from _strings(value)


_KEY = rb'"(?:' + b"|".join(sorted(k.encode() for k in NAMING_KEYS)) + rb')":'
# a naming field's value: a plain string, a flat list of plain strings, or (both groups empty)
# something else, which sends the event to the parser
_FIELD = re.compile(_KEY + rb'(?:"([^"\\]*)"|(\[[^\[\]{}"\\]*(?:"[^"\\]*"[^\[\]{}"\\]*)*\])|)')
_STRING = re.compile(rb'"([^"\\]*)"')


def names_of_stored(state: bytes) -> set[str] | None:
    """`names` read straight from an event's stored JSON (a fraction of the cost of parsing
    it), or None when that is not certain: sealed content, an escape, a nested list, a null."""
    if b"\\" in state or b'"_sealed"' in state:
        return None
    found: set[str] = set()
    for text, items in _FIELD.findall(state):
        if text:
            found.add(text.decode().lower())
        elif items:
            found.update(v.decode().lower() for v in _STRING.findall(items))
        else:  # null, "", a nested list...: let the parser say
            return None
    return found


def names(payload: dict[str, Any]) -> set[str]:
    """What an event's stored payload names (lower case: addresses are folded lower case)."""
    found: set[str] = set()
    todo = [payload]
    while todo:  # 50k record events on the 1M history: keep it flat, it is most of the cost
        fields = todo.pop()
        for key in NAMING_KEYS.intersection(fields):
            value = fields[key]
            if isinstance(value, str):
                found.add(value.lower())
            elif isinstance(value, list):
                found.update(_strings(value))
        todo.extend(_dicts(list(fields.values())))
    return found


def _dicts(values: list[Any]) -> Iterator[dict[str, Any]]:
    for value in values:
        if isinstance(value, dict):
            yield value
        elif isinstance(value, list):
            yield from _dicts(value)


def related(seeds: Iterable[str], named: list[set[str]]) -> list[bool]:
    """For each record event (what it names, in stream order): is it kept? The fixpoint of
    "names something known" from `seeds` (the thread and its messages' addresses)."""
    known = {s.lower() for s in seeds}
    kept = [False] * len(named)
    changed = True
    while changed:
        changed = False
        for i, these in enumerate(named):
            if kept[i] or known.isdisjoint(these):
                continue
            kept[i] = True
            if not these <= known:
                known |= these
                changed = True
    return kept
