"""`crmsync run contacts`: the Exchange / Office 365 contact-sync runner (issue #5, SPEC §5).

Two jobs, one process:

- **Outbound.** It follows the event log (a `runners.services.follower.LogFollower`) for
  `ExternalContactChangeQueued` and executes each change against the user's Graph address book:
  `upsert` → PATCH the external contact (POST a new one when `external_id` is None) with the
  fields and the Base categories (the contact's other categories are kept);
  `revert_category_rename` → create the Base category again (Graph does not let a category's
  name change, so the renamed one is left alone); `remove` → DELETE the contact when the CRM
  created it, else PATCH it without its Base categories (the user's own contact is not ours to
  delete, C5). Then it issues `AcknowledgeExternalContactChange` (ok with the external id, or
  refused with the provider's reason after `attempts` tries). Its log position and each
  change's answer are kept in `contact_sync_state`, so a restart neither skips a change nor
  calls the provider twice for one.
- **Inbound.** Every `interval` seconds, for each user with ConnectContactSync (folded from the
  log; deactivated and deleted users are left out, L1), it reads the master categories (a Base
  or selected category whose name changed → RenameExternalCategory, C3) and one delta round per
  contact folder: contacts carrying a selected or a Base category, or already synced, become
  SyncExternalContact; `@removed` ones already synced become DeleteExternalContact (the domain
  records them, C5). Commands go to the engine in one batch per page, then the page's delta
  link is stored. An expired cursor (410) starts a full round; 429 after the client's retries
  pauses that user for Retry-After.
- **Echo suppression (C4).** For every contact that went either way the runner keeps the
  content fingerprint (fields + categories) and lastModifiedDateTime of the last version it
  saw or wrote. A delta entry equal to it — the runner's own write coming back, or nothing new —
  is not turned into a command; nor is the `@removed` of a contact the runner itself deleted.

Which users: `connection_of(event)` is the one place that reads a contact-sync connection from
an event (`ContactSyncConnected`, as the contact domain folds it). Their Graph token: the
OAuth `access_token` stored for the user's connected `outlook` mailbox (the same Microsoft
account), read from the credential store at every request; without one a user is not pulled and
their queued changes are refused with the reason. The process around it (clients, state store,
lock, rounds): `runners.entrypoints.contacts_runner`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from adapters.errors import CursorExpired, ProviderError, ProviderThrottled
from adapters.metrics import prometheus as metrics
from adapters.providers.graph.contact_payloads import ContactFolder, ExternalContact
from adapters.providers.graph.contacts import ContactsClient
from adapters.tracking.contact_sync import ContactSyncStore
from domain.events import (
    ContactSyncConnected,
    DomainEvent,
    ExternalContactChangeQueued,
    UserDeactivated,
    UserDeleted,
    UserReactivated,
)
from projections.projector import Logged
from runners.services.engine import Engine
from runners.services.follower import LogFollower

BASE_CATEGORIES = ("Base Person", "Base Company", "Base Lead", "Base Current Prospect",
                   "Base Lost Prospect", "Base Current Customer", "Base Past Customer")
ACTOR = "system:contacts"

log = structlog.get_logger("crmsync.contacts")

ClientFactory = Callable[[str, str], ContactsClient | None]  # (tenant, user) -> client or None


@dataclass
class Connection:
    tenant: str
    user: str
    categories: list[str]
    active: bool = True


def connection_of(event: DomainEvent) -> tuple[str, list[str]] | None:
    """(user, selected categories) when `event` connects a user's contact sync (C1)."""
    if isinstance(event, ContactSyncConnected):
        return event.user, list(event.categories)
    return None


def _merge_categories(current: list[str], base: list[str]) -> list[str]:
    """The contact's own (non-Base) categories, then the Base ones the CRM assigns."""
    own = [c for c in current if c not in BASE_CATEGORIES]
    return own + [c for c in base if c not in own]


def _unseen(current: ExternalContact, seen: Mapping[str, Any]) -> bool:
    """`current` holds a version the runner has neither pulled nor written."""
    return bool(seen) and current.fingerprint() != seen.get("fingerprint") and (
        _iso(current.modified_at) != seen.get("modified"))


def _edited_meanwhile(read: ExternalContact, written: ExternalContact,
                      ours: Mapping[str, Any]) -> bool:
    """The contact our write answered differs from the one read just before it in a field the
    write did not set: someone else's edit came in between (it is not our own version)."""
    keys = (set(read.fields) | set(written.fields)) - set(ours)
    return any(read.fields.get(k) != written.fields.get(k) for k in keys)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class ContactSyncRunner:
    def __init__(self, engine: Engine, store: ContactSyncStore, clients: ClientFactory, *,
                 batch_size: int = 500, attempts: int = 3, retry_wait: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.store = store
        self.clients = clients
        self.batch_size = batch_size
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.sleep = sleep
        self.clock = clock
        self.connections: dict[tuple[str, str], Connection] = {}
        self.paused_until: dict[tuple[str, str], float] = {}
        # `follower.position`: the log folded into `connections`
        self.follower = LogFollower("contact sync", batch=batch_size, log=log)
        self.executed = store.position()  # queued changes up to here are done
        self.last_pull = float("-inf")

    # -- following the log ------------------------------------------------------------------------
    def follow_log(self) -> int:
        """Fold new events; execute the queued changes not executed yet. Returns how far it
        read."""
        return self.follower.read(self.engine, self._follow)

    def _follow(self, batch: Sequence[Logged]) -> None:
        for logged in batch:
            self._fold(logged.event)
            if logged.position > self.executed:
                if isinstance(logged.event, ExternalContactChangeQueued):
                    self._execute(logged.event)
                self.executed = logged.position
        self.store.set_position(self.executed)

    def _fold(self, event: DomainEvent) -> None:
        connected = connection_of(event)
        if connected is not None:
            user, categories = connected
            key = (event.tenant, user)
            active = self.connections[key].active if key in self.connections else True
            self.connections[key] = Connection(event.tenant, user, categories, active)
        elif isinstance(event, UserDeactivated | UserDeleted | UserReactivated):
            for conn in self.connections.values():
                if conn.tenant == event.tenant and conn.user == event.user:
                    conn.active = isinstance(event, UserReactivated)

    # -- outbound ---------------------------------------------------------------------------------
    def _execute(self, change: ExternalContactChangeQueued) -> None:
        tenant = change.tenant
        answer = self.store.done(tenant, change.change_id)
        if answer is None:
            answer, seen = self._attempt(change)
            self.store.set_done(tenant, change.change_id, answer, seen)
        command = {"cmd": "AcknowledgeExternalContactChange", "tenant": tenant, "actor": ACTOR,
                   "command_id": f"xc-ack:{change.change_id}", "user": change.user,
                   "change_id": change.change_id, **answer}
        report = self.engine.apply_lines([orjson.dumps(command)])
        log.info("change acknowledged", tenant=tenant, user=change.user,
                 change_id=change.change_id, operation=change.operation,
                 ok=answer.get("ok"), rejected=len(report.rejected))

    def _attempt(self, change: ExternalContactChangeQueued
                 ) -> tuple[dict[str, Any], tuple[str, str, dict[str, Any]] | None]:
        error, wait = "no attempt made", 0.0
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(wait)
            wait = self.retry_wait * 2 ** attempt
            try:
                with self._client(change.tenant, change.user) as client:
                    if client is None:
                        return {"ok": False, "error": "no Microsoft Graph credentials for this "
                                "user (connect an outlook mailbox)"}, None
                    return self._apply(client, change)
            except ProviderThrottled as exc:
                metrics.provider_failed("graph", exc)
                error, wait = exc.reason, max(wait, exc.retry_after)
            except ProviderError as exc:
                metrics.provider_failed("graph", exc)
                error = exc.reason
                if exc.status is not None and 400 <= exc.status < 500:
                    break  # the provider refused it: trying again will not help
            log.info("change attempt failed", tenant=change.tenant, user=change.user,
                     change_id=change.change_id, attempt=attempt + 1, error=error)
        return {"ok": False, "error": f"graph: {error}"[:2000]}, None

    def _apply(self, client: ContactsClient, change: ExternalContactChangeQueued
               ) -> tuple[dict[str, Any], tuple[str, str, dict[str, Any]] | None]:
        user = change.user
        if change.operation == "revert_category_rename":
            if change.category_new is None:
                return {"ok": False, "error": "revert_category_rename without category_new"}, None
            categories = client.categories()
            if not any(c.name == change.category_new for c in categories):
                color = next((c.color for c in categories if c.name == change.category_old), None)
                client.create_category(change.category_new, color)
            self.store.set_categories(change.tenant, user,
                                      {c.id: c.name for c in client.categories()})
            return {"ok": True}, None
        previous = (self.store.seen(change.tenant, user, change.external_id)
                    if change.external_id else None) or {}
        origin = previous.get("origin", "external")
        if change.operation == "remove":
            current = (client.get_contact(change.external_id)
                       if change.external_id is not None else None)
            if current is None:
                return {"ok": True}, None  # not (or no longer) in the book
            if origin == "crm":
                client.delete_contact(current.id)
                return {"ok": True, "external_id": current.id}, (
                    user, current.id, {**previous, "deleted": True, "by": "us"})
            kept = [c for c in current.categories if c not in BASE_CATEGORIES]
            written = client.update_contact(current.id, {}, kept)
        elif change.external_id is None:
            written = client.create_contact(change.fields, change.categories)
            origin = "crm"
        else:
            # `categories` are the Base categories the contact must carry (C2): the user's own
            # categories on it stay, the Base ones are replaced.
            current = client.get_contact(change.external_id)
            written = None if current is None else client.update_contact(
                current.id, change.fields, _merge_categories(current.categories,
                                                             change.categories))
            if written is not None and current is not None and (
                    _unseen(current, previous) or _edited_meanwhile(current, written,
                                                                     change.fields)):
                # An external edit the runner has not pulled yet is in the contact we wrote
                # (before our read, or between our read and our write): keep the last seen
                # version, so the next pull brings the contact in (C4 must not swallow it).
                return {"ok": True, "external_id": written.id}, None
        if written is None:
            return {"ok": False, "error": f"external contact {change.external_id} no longer "
                    "exists (deleted externally; deletions are not synced, C5)"}, None
        return {"ok": True, "external_id": written.id}, (user, written.id,
                                                         self._seen(written, "us", origin))

    @staticmethod
    def _seen(contact: ExternalContact, by: str, origin: str) -> dict[str, Any]:
        return {"fingerprint": contact.fingerprint(), "modified": _iso(contact.modified_at),
                "by": by, "origin": origin}

    @contextmanager
    def _client(self, tenant: str, user: str) -> Iterator[ContactsClient | None]:
        client = self.clients(tenant, user)
        try:
            yield client
        finally:
            if client is not None:
                client.close()

    # -- inbound ----------------------------------------------------------------------------------
    def pull_all(self) -> None:
        for key, conn in list(self.connections.items()):
            if not conn.active or self.paused_until.get(key, 0.0) > self.clock():
                continue
            try:
                with self._client(conn.tenant, conn.user) as client:
                    if client is None:
                        log.warning("no graph credentials", tenant=conn.tenant, user=conn.user)
                        continue
                    self.pull(conn, client)
            except ProviderThrottled as exc:
                metrics.provider_failed("graph", exc)
                self.paused_until[key] = self.clock() + exc.retry_after
                log.warning("throttled", tenant=conn.tenant, user=conn.user,
                            retry_after=exc.retry_after)
            except ProviderError as exc:
                metrics.provider_failed("graph", exc)
                log.warning("pull failed", tenant=conn.tenant, user=conn.user, error=exc.reason)

    def pull(self, conn: Connection, client: ContactsClient) -> None:
        self._categories(conn, client)
        for folder in client.folders():
            self._folder(conn, client, folder)

    def _apply_commands(self, commands: list[dict[str, Any]]) -> None:
        if not commands:
            return
        report = self.engine.apply_lines([orjson.dumps(c) for c in commands])
        log.info("commands issued", tenant=commands[0]["tenant"], user=commands[0]["user"],
                 applied=report.applied, unchanged=report.unchanged,
                 rejected=len(report.rejected))
        for number, cmd, field, reason in report.rejected:
            log.info("command rejected", cmd=cmd, field=field, reason=reason,
                     external_id=commands[number - 1].get("external_id"))

    def _command(self, conn: Connection, cmd: str, command_id: str, **fields: Any
                 ) -> dict[str, Any]:
        return {"cmd": cmd, "tenant": conn.tenant, "actor": ACTOR, "command_id": command_id,
                "user": conn.user, **fields}

    def _categories(self, conn: Connection, client: ContactsClient) -> None:
        current = {c.id: c.name for c in client.categories()}
        before = self.store.categories(conn.tenant, conn.user)
        watched = set(BASE_CATEGORIES) | set(conn.categories)
        if before is not None:
            commands = [
                self._command(conn, "RenameExternalCategory",
                              f"xc-rename:{conn.user}:{cid}:{old}:{current[cid]}",
                              old=old, new=current[cid])
                for cid, old in before.items()
                if cid in current and current[cid] != old and old in watched]
            self._apply_commands(commands)
        self.store.set_categories(conn.tenant, conn.user, current)

    def _folder(self, conn: Connection, client: ContactsClient, folder: ContactFolder) -> None:
        cursor = self.store.cursor(conn.tenant, conn.user, folder.id)
        restarted = False
        while True:
            try:
                page = client.contacts_delta(folder.id, cursor)
            except CursorExpired:
                if restarted:
                    raise
                log.info("cursor expired: full round", tenant=conn.tenant, user=conn.user,
                         folder=folder.id)
                restarted, cursor = True, None
                continue
            commands: list[dict[str, Any]] = []
            seen: dict[str, dict[str, Any]] = {}
            for contact in page.contacts:
                before = self.store.seen(conn.tenant, conn.user, contact.id)
                if not self._incoming(conn, contact, before):
                    continue
                version = contact.change_key or _iso(contact.modified_at)
                commands.append(self._command(
                    conn, "SyncExternalContact", f"xc-in:{conn.user}:{contact.id}:{version}",
                    external_id=contact.id, folder=folder.kind, fields=contact.fields,
                    categories=contact.categories, modified_at=_iso(contact.modified_at)))
                seen[contact.id] = self._seen(contact, "them",
                                              (before or {}).get("origin", "external"))
            for removed in page.removed_ids:
                before = self.store.seen(conn.tenant, conn.user, removed)
                if before is None or before.get("deleted"):
                    continue  # never synced, or the runner's own deletion coming back
                commands.append(self._command(conn, "DeleteExternalContact",
                                              f"xc-del:{conn.user}:{removed}",
                                              external_id=removed))
                seen[removed] = {**before, "deleted": True, "by": "them"}
            self._apply_commands(commands)
            self.store.remember(conn.tenant, conn.user, seen)
            cursor = page.next_link or page.delta_link
            self.store.set_cursor(conn.tenant, conn.user, folder.id, cursor)
            if page.delta_link is not None:
                return

    def _incoming(self, conn: Connection, contact: ExternalContact,
                  before: Mapping[str, Any] | None) -> bool:
        if before is not None:
            if before.get("fingerprint") == contact.fingerprint() and not before.get("deleted"):
                return False  # nothing new: our own write coming back, or a repeat (C4)
            # the version our own write produced (C4)
            return not (before.get("by") == "us"
                        and before.get("modified") == _iso(contact.modified_at))
        return bool(set(contact.categories) & (set(conn.categories) | set(BASE_CATEGORIES)))

    # -- the process ----------------------------------------------------------------------------
    def run_once(self) -> None:
        self.follow_log()
        self.pull_all()
        self.follow_log()

    def round(self, *, interval: float, poll: float) -> float:
        """One round of `crmsync run contacts`: the log followed, and every `interval` seconds
        a pull. Returns how long to wait for new events (0: nothing was idle)."""
        read = self.follow_log()
        if self.clock() - self.last_pull >= interval:
            self.pull_all()
            self.last_pull = self.clock()
            read += self.follow_log()
        return 0.0 if read else min(poll, interval)
