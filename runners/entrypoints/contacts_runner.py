"""`crmsync run contacts`: the contact-sync runner as a process of its own (issue #5, SPEC §5).

What it does is `runners.services.contact_sync.ContactSyncRunner`; here is how it runs: its
Graph clients (the token of the user's connected `outlook` mailbox, from the credential store),
its state store beside the engine's, the lock that keeps one runner per deployment, and the
rounds of the one log follower (`runners.services.follower`) until SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from adapters.errors import CredentialsRejected, ProviderError
from adapters.providers.graph.contacts import (
    DEFAULT_GRAPH_API_URL,
    ContactsClient,
    GraphContactsClient,
)
from adapters.providers.oauth import StoredOAuthToken, TokenEndpoint
from adapters.tracking.contact_sync import (
    ContactSyncStore,
    MemoryKeyValues,
)
from runners.bootstrap.settings import load_settings
from runners.entrypoints.sync_runner import token_endpoints
from runners.services.contact_sync import ClientFactory, ContactSyncRunner
from runners.services.engine import Engine
from runners.services.follower import LogFollower, Waiter, run_until_signalled

log = structlog.get_logger("crmsync.contacts")


def graph_clients(engine: Engine, base_url: str, tokens: dict[str, TokenEndpoint] | None = None,
                  **options: Any) -> ClientFactory:
    """Graph clients whose token is the OAuth access token stored for the user's connected
    `outlook` mailbox (read at every request, so a refreshed token is used at once). A 401
    renews it once with the stored refresh token at `tokens["outlook"]` and writes it back,
    as the sync workers do."""
    endpoint = (tokens or {}).get("outlook")

    def refresher(tenant: str, mailbox: str) -> Callable[[], None]:
        def refresh() -> None:
            store = engine.credentials
            stored = store.get(tenant, mailbox) if store is not None else None
            if store is None or stored is None:
                raise CredentialsRejected("graph", "the access token was refused and the "
                                          "mailbox's credentials were removed")

            StoredOAuthToken(store, tenant, mailbox, stored, endpoint, provider="graph",
                             still_set=lambda: engine.credentials_still_set(tenant, mailbox)
                             ).refresh()

        return refresh

    def reader(tenant: str, mailbox: str) -> Callable[[], str]:
        def token() -> str:
            stored = engine.credentials.get(tenant, mailbox) if engine.credentials else None
            value = (stored or {}).get("access_token")
            if not isinstance(value, str):
                raise ProviderError("graph", "the mailbox's credentials were removed")
            return value

        return token

    def token_of(tenant: str, user: str) -> tuple[Callable[[], str], str] | None:
        if engine.credentials is None:
            return None
        state = engine.state(tenant)
        mailboxes = [m for m in state.mailboxes.values()
                     if m.user == user and m.provider == "outlook" and m.credentials_set
                     and m.status == "connected"]
        for mailbox in sorted(mailboxes, key=lambda m: m.id):
            stored = engine.credentials.get(tenant, mailbox.id)
            if stored and isinstance(stored.get("access_token"), str):
                return reader(tenant, mailbox.id), mailbox.id
        return None

    def factory(tenant: str, user: str) -> ContactsClient | None:
        found = token_of(tenant, user)
        if found is None:
            return None
        token, mailbox = found
        return GraphContactsClient(token, base_url, refresh=refresher(tenant, mailbox), **options)

    return factory


def open_state(engine: Engine, postgres: str | None) -> ContactSyncStore:
    """The runner's state beside the engine's: the PostgreSQL schema, else the SQLite file."""
    if postgres:
        from adapters.tracking.contact_sync_postgres import PostgresKeyValues

        return ContactSyncStore(PostgresKeyValues(postgres))
    if engine.path is None:
        return ContactSyncStore(MemoryKeyValues())
    from adapters.tracking.contact_sync_sqlite import SqliteKeyValues

    return ContactSyncStore(SqliteKeyValues(engine.path))


def run_contacts(engine: Engine, postgres: str | None, waiter: Waiter, *, interval: float,
                 poll: float, once: bool) -> int:
    """`crmsync run contacts`: until SIGTERM/SIGINT (or one pass with `once`; 1 when another
    runner kept the lock). A store outage does not end it (issue #10 point 10): its state
    store is opened again after a backoff, the lock taken again, and the runner starts over
    from the stored position."""
    stop = threading.Event()
    if once:
        return run_until_signalled(stop, lambda: _once(engine, postgres, waiter, stop, poll),
                                   waiter.close)
    follower = LogFollower("contact sync", waiter=waiter, stop=stop, log=log)
    runner: ContactSyncRunner | None = None

    @contextlib.contextmanager
    def session() -> Iterator[None]:
        nonlocal runner
        with _opened(engine, postgres) as store:
            if _locked(store, waiter, stop, wait=max(poll, 5.0)):
                runner = ContactSyncRunner(engine, store, _clients(engine))
                log.info("contact sync started", position=runner.executed, interval=interval)
            yield  # not locked: stopped meanwhile, no round runs

    def one_round() -> float:
        assert runner is not None
        return runner.round(interval=interval, poll=poll)

    follower.run_until_signalled(one_round, session)
    if runner is not None:
        log.info("contact sync stopped", position=runner.executed)
    return 0


def _once(engine: Engine, postgres: str | None, waiter: Waiter, stop: threading.Event,
          poll: float) -> int:
    """One pass; an outage ends it. A runner that just stopped lets go of the lock soon: wait
    15 s for it, then give up (1)."""
    with _opened(engine, postgres) as store:
        if not _locked(store, waiter, stop, wait=min(poll, 1.0), give_up=15.0):
            return 0 if stop.is_set() else 1
        ContactSyncRunner(engine, store, _clients(engine)).run_once()
        return 0


@contextlib.contextmanager
def _opened(engine: Engine, postgres: str | None) -> Iterator[ContactSyncStore]:
    store = open_state(engine, postgres)
    try:
        yield store
    except BaseException:
        with contextlib.suppress(Exception):  # the outage that ended it may break the close
            store.close()
        raise
    store.close()


def _locked(store: ContactSyncStore, waiter: Waiter, stop: threading.Event, *, wait: float,
            give_up: float | None = None) -> bool:
    """Take the runner lock, waiting while another runner keeps it; False when stopped
    meanwhile or after `give_up` seconds."""
    deadline = None if give_up is None else time.monotonic() + give_up
    while not store.try_lock():
        if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
            log.warning("another contact-sync runner holds the lock")
            return False
        log.info("waiting: another contact-sync runner holds the lock")
        waiter.wait(wait)
    return True


def _clients(engine: Engine) -> ClientFactory:
    base_url = load_settings().GRAPH_API_URL or DEFAULT_GRAPH_API_URL
    return graph_clients(engine, base_url, token_endpoints())
