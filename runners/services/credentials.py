"""Keeping the credential store in step with the event log (SPEC §6 `credentials`).

The command carries the credentials, the event only `credentials_set`. After a ConnectMailbox is
appended, its credentials are written to the store; after any `CredentialsRemoved` is appended
(DisconnectMailbox, DeleteUser), that mailbox's credentials are erased. Erasure is driven by the
events, so `erase_removed` (run when an engine opens) finishes what a crash interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adapters.credentials.store import CredentialStore
from adapters.errors import CredentialStoreError
from adapters.eventstore.store import EventStore
from domain.commands import Command, ConnectMailbox
from domain.events import CredentialsRemoved, DomainEvent, MailboxConnected
from domain.state import TenantState
from projections.projector import Logged
from runners.services.follower import LogFollower

if TYPE_CHECKING:
    from runners.services.engine import Engine

_BATCH = 1000


def check_ready(store: CredentialStore | None, command: Command) -> None:
    """Before deciding: a command that carries credentials needs a store that can take them."""
    if store is not None and isinstance(command, ConnectMailbox) \
            and command.credentials is not None:
        store.ready()


def after_append(store: CredentialStore | None, log: EventStore, command: Command,
                 state: TenantState, events: Sequence[DomainEvent]) -> None:
    """Write or erase credentials for events just appended (`state` includes them).

    A ConnectMailbox sent again with its command_id (no events: already applied) writes its
    credentials again if the mailbox still has them set but the store has none — the way to
    finish after a store failure. Raises CredentialStoreError; the events stay appended.
    """
    if store is None:
        return  # in memory: no credential store, the credentials are not kept
    for event in events:
        if isinstance(event, CredentialsRemoved):
            store.erase(event.tenant, event.mailbox)
    if not isinstance(command, ConnectMailbox) or command.credentials is None:
        return
    connected = any(isinstance(e, MailboxConnected) and e.credentials_set for e in events)
    mailbox = log.mailbox(state, command.mailbox)  # (folded first if `state` is lazy)
    retried = (not events and mailbox is not None and mailbox.credentials_set
               and store.get(command.tenant, command.mailbox) is None)
    if not (connected or retried):
        return
    try:
        store.put(command.tenant, command.mailbox, command.credentials.model_dump(mode="json"))
    except CredentialStoreError as exc:
        raise CredentialStoreError(
            f"mailbox {command.mailbox!r} is connected, but its credentials were not stored "
            f"({exc}); send the same command again with its command_id, or the sync reports "
            "the credentials missing") from None
    # A DisconnectMailbox/DeleteUser appended by another writer between our append and our put
    # erased nothing; look again now that the row exists (the log is read after the put).
    if not still_set(log, command.tenant, command.mailbox):
        store.erase(command.tenant, command.mailbox)


def still_set(log: EventStore, tenant: str, mailbox: str) -> bool:
    """Does the log still say the mailbox has credentials (no DisconnectMailbox or DeleteUser
    since)? Asked before a stored secret is kept: after a ConnectMailbox's put, and by a token
    refresh before it stores the new token. Folds that mailbox only (#15)."""
    latest = log.mailbox(log.state(tenant, lazy=True), mailbox)
    return latest is not None and latest.credentials_set


def _credential_events(kind: type[DomainEvent], data: bytes) -> bool:
    return issubclass(kind, MailboxConnected | CredentialsRemoved)  # the mail is skipped unread


def erase_removed(engine: Engine) -> int:
    """Erase the credentials of every mailbox whose latest credentials event in the log is
    `CredentialsRemoved`; idempotent. Reads the log from where it stopped last time (kept in the
    store); with an empty store it only moves that mark. Returns how many mailboxes it erased."""
    store = engine.credentials
    if store is None:
        return 0
    end = engine.head()
    position = store.erasure_position()
    if position >= end:
        return 0
    if store.is_empty():  # nothing to erase; a later put re-checks the log itself
        store.advance_erasure(end)
        return 0
    latest: dict[tuple[str, str], bool] = {}  # (tenant, mailbox) -> credentials set

    def fold(batch: Sequence[Logged]) -> None:
        for logged in batch:
            event = logged.event
            if isinstance(event, MailboxConnected) and event.credentials_set:
                latest[event.tenant, event.mailbox] = True
            elif isinstance(event, CredentialsRemoved):
                latest[event.tenant, event.mailbox] = False

    follower = LogFollower("credential erasure", position=position, batch=_BATCH,
                           keep=_credential_events)
    follower.read(engine, fold)
    removed = sorted(key for key, is_set in latest.items() if not is_set)
    for tenant, mailbox in removed:
        store.erase(tenant, mailbox)
    store.advance_erasure(follower.position)
    return len(removed)
