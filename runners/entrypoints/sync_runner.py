"""Composition of the sync workers from configuration: `crmsync run sync`, `crmsync deadletters`,
and the in-process worker of an embedded `crmsync serve`.

- Work queue: JetStream when `CRMSYNC_NATS_URL` is set (stream `CRMSYNC_NATS_STREAM`, subject
  prefix `CRMSYNC_NATS_SUBJECT_PREFIX`, consumer `CRMSYNC_NATS_DURABLE`, redelivery after
  `CRMSYNC_NATS_ACK_WAIT` seconds without an ack, default 120), else the SQLite webhook
  inbox (`CRMSYNC_WEBHOOK_INBOX`, else `<db>.webhooks.db`, as `crmsync serve` writes it).
- Mailbox locks: PostgreSQL advisory locks with PostgreSQL, else a lock file `<db>.sync.lock`.
- Provider clients: `CRMSYNC_GMAIL_API_URL`, `CRMSYNC_GRAPH_API_URL` (`CRMSYNC_GRAPH_CA_FILE`: a
  private CA for it), credentials from the engine's credential store, read per sync and never
  logged.
- OAuth token refresh on a provider's 401: the refresh-token grant at `CRMSYNC_GOOGLE_TOKEN_URL` /
  `CRMSYNC_MICROSOFT_TOKEN_URL` (defaults: the real endpoints) with `CRMSYNC_GOOGLE_CLIENT_ID`
  + `CRMSYNC_GOOGLE_CLIENT_SECRET` / `CRMSYNC_MICROSOFT_CLIENT_ID` +
  `CRMSYNC_MICROSOFT_CLIENT_SECRET` (+ optional `CRMSYNC_MICROSOFT_TOKEN_SCOPE`); the new token
  is written back to the credential store. Without a client id there is no refresh.
- Push channels: `--public-url` / `CRMSYNC_PUBLIC_URL` (the webhook receiver as providers reach
  it; Graph notifications go to `<url>/webhooks/graph`) with `CRMSYNC_GRAPH_CLIENT_STATE`, and
  `--gmail-topic` / `CRMSYNC_GMAIL_TOPIC` (the Pub/Sub topic Gmail publishes to); checked every
  `--push-interval` seconds (`CRMSYNC_PUSH_INTERVAL`, default 300).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from runners.bootstrap.settings import PREFIX, Settings, load_settings

# Light imports only: `runners.entrypoints.cli` builds its parser with `add_parsers` on every
# command, so the provider clients and the worker are imported when a sync command runs.
if TYPE_CHECKING:
    import ssl

    from adapters.credentials.store import CredentialStore
    from adapters.deliveries.work_queue import WorkQueue
    from adapters.providers.oauth import TokenEndpoint
    from adapters.providers.sources import MailSource
    from domain.state import Mailbox
    from runners.entrypoints.sync_loop import LoopOptions
    from runners.services.affinity import Affinity
    from runners.services.engine import Engine
    from runners.services.push_channels import PushSettings
    from runners.services.sync_common import MailboxLocks
    from runners.services.sync_worker import SyncWorker

# provider -> (token URL variable, client id variable, client secret variable)
TOKEN_ENV = {"gmail": ("CRMSYNC_GOOGLE_TOKEN_URL", "CRMSYNC_GOOGLE_CLIENT_ID",
                       "CRMSYNC_GOOGLE_CLIENT_SECRET"),
             "outlook": ("CRMSYNC_MICROSOFT_TOKEN_URL", "CRMSYNC_MICROSOFT_CLIENT_ID",
                         "CRMSYNC_MICROSOFT_CLIENT_SECRET")}


def token_endpoints(env: Settings | Mapping[str, str] | None = None
                    ) -> dict[str, TokenEndpoint]:
    """The OAuth token endpoints of the providers whose client id is configured."""
    from adapters.providers.oauth import (
        DEFAULT_GOOGLE_TOKEN_URL,
        DEFAULT_MICROSOFT_TOKEN_URL,
        TokenEndpoint,
    )

    settings = env if isinstance(env, Settings) else load_settings(env)
    defaults = {"gmail": DEFAULT_GOOGLE_TOKEN_URL, "outlook": DEFAULT_MICROSOFT_TOKEN_URL}
    out: dict[str, TokenEndpoint] = {}
    for provider, (url_var, id_var, secret_var) in TOKEN_ENV.items():
        client_id = settings.secret(id_var.removeprefix(PREFIX))
        if not client_id:
            continue
        out[provider] = TokenEndpoint(
            "graph" if provider == "outlook" else provider,
            settings.secret(url_var.removeprefix(PREFIX)) or defaults[provider], client_id,
            settings.secret(secret_var.removeprefix(PREFIX)),
            scope=settings.MICROSOFT_TOKEN_SCOPE if provider == "outlook" else None)
    return out


def push_settings(env: Settings, public_url: str | None = None, gmail_topic: str | None = None
                  ) -> PushSettings | None:
    """Push channels from flags and the settings; None when no provider is configured."""
    from runners.services.push_channels import PushSettings

    settings = PushSettings(
        public_url=public_url or env.PUBLIC_URL,
        client_state=env.secret("GRAPH_CLIENT_STATE"),
        gmail_topic=gmail_topic or env.GMAIL_TOPIC)
    if not (settings.enabled("gmail") or settings.enabled("outlook")):
        return None
    return settings


class ConfiguredSources:
    """Provider clients for a mailbox, from its stored credentials (None when there are none)."""

    def __init__(self, credentials: CredentialStore | None, *, gmail_url: str | None = None,
                 graph_url: str | None = None, graph_ca: str | None = None,
                 tokens: dict[str, TokenEndpoint] | None = None,
                 still_set: Callable[[str, str], bool] | None = None,
                 settings: Settings | None = None) -> None:
        import ssl

        from adapters.providers.gmail.client import DEFAULT_GMAIL_API_URL
        from adapters.providers.graph.client import DEFAULT_GRAPH_API_URL

        settings = settings or load_settings()  # tests build sources without an entry point
        self.credentials = credentials
        self.gmail_url = gmail_url or settings.GMAIL_API_URL or DEFAULT_GMAIL_API_URL
        self.graph_url = graph_url or settings.GRAPH_API_URL or DEFAULT_GRAPH_API_URL
        ca = graph_ca or settings.GRAPH_CA_FILE
        self.graph_verify: ssl.SSLContext | bool = \
            ssl.create_default_context(cafile=ca) if ca else True
        self.tokens = token_endpoints(settings) if tokens is None else tokens
        self.still_set = still_set

    def open(self, tenant: str, mailbox: Mailbox) -> MailSource | None:
        from adapters.providers.gmail.client import GmailClient
        from adapters.providers.gmail.source import gmail_source
        from adapters.providers.graph.client import GraphClient
        from adapters.providers.graph.source import GraphSource, GraphSubscriptions
        from adapters.providers.imap.client import ImapAccount
        from adapters.providers.imap.source import ImapSource
        from adapters.providers.oauth import StoredOAuthToken
        from adapters.providers.sources import scope_folders

        if self.credentials is None:
            return None
        creds: dict[str, Any] | None = self.credentials.get(tenant, mailbox.id)
        if creds is None:
            return None
        if mailbox.provider == "imap":
            return ImapSource(ImapAccount(str(creds["host"]), int(creds["port"]),
                                          str(creds["user"]), str(creds["password"]),
                                          tls="ssl" if creds.get("tls", True) else "none"),
                              folders=scope_folders(mailbox.scope),
                              backfill_days=mailbox.backfill_days)
        still_set = self.still_set
        token = StoredOAuthToken(
            self.credentials, tenant, mailbox.id, creds, self.tokens.get(mailbox.provider),
            provider="gmail" if mailbox.provider == "gmail" else "graph",
            still_set=(lambda: still_set(tenant, mailbox.id)) if still_set else lambda: True)
        if mailbox.provider == "gmail":
            gmail = GmailClient(token, self.gmail_url, refresh=token.refresh)
            return gmail_source(gmail)
        graph = GraphClient(token, self.graph_url, verify=self.graph_verify,
                            refresh=token.refresh)
        # every folder in the mailbox's S1 scope, each with its own delta (issue #13)
        return GraphSource(graph, folders=scope_folders(mailbox.scope),
                           backfill_days=mailbox.backfill_days, push=GraphSubscriptions(graph))


def inbox_path(db: str, settings: Settings) -> str:
    """The SQLite webhook inbox `crmsync serve` writes (runners.entrypoints.serve.webhook_inbox)."""
    path = settings.WEBHOOK_INBOX
    if path:
        return path
    return (db[:-3] if db.endswith(".db") else db) + ".webhooks.db"


def open_queue(db: str, settings: Settings) -> WorkQueue:
    if settings.NATS_URL:
        from adapters.deliveries.work_jetstream import JetStreamWork

        return JetStreamWork(settings.NATS_URL, stream=settings.NATS_STREAM,
                             subject_prefix=settings.NATS_SUBJECT_PREFIX,
                             durable=settings.NATS_DURABLE, ack_wait=settings.NATS_ACK_WAIT)
    from adapters.deliveries.work_sqlite import SqliteWork

    return SqliteWork(inbox_path(db, settings))


def open_work(db: str, postgres: str | None, settings: Settings, worker: SyncWorker
              ) -> tuple[WorkQueue, Affinity | None]:
    """The sync workers' queue; partitioned by tenant (issue #15) with JetStream, PostgreSQL
    (the partition leases) and `CRMSYNC_NATS_PARTITIONS` > 0. The embedded inbox is read by
    one process and needs none."""
    from runners.bootstrap.config import postgres_url

    url = postgres_url(postgres, settings)
    if not (settings.NATS_URL and url and settings.NATS_PARTITIONS > 0):
        return open_queue(db, settings), None
    from adapters.deliveries.partition_leases_postgres import PostgresLeases
    from adapters.deliveries.work_jetstream_parts import JetStreamPartitioned
    from runners.services.affinity import Affinity

    queue = JetStreamPartitioned(settings.NATS_URL, partitions=settings.NATS_PARTITIONS,
                                 stream=settings.NATS_STREAM,
                                 subject_prefix=settings.NATS_SUBJECT_PREFIX,
                                 durable=settings.NATS_DURABLE, ack_wait=settings.NATS_ACK_WAIT)
    leases = PostgresLeases(url, f"{settings.NATS_STREAM}:{settings.NATS_DURABLE}")
    return queue, Affinity(queue, leases, worker)


def open_locks(db: str, postgres: str | None, settings: Settings) -> MailboxLocks:
    from adapters.eventstore.mailbox_locks import FileLocks
    from runners.bootstrap.config import postgres_url

    url = postgres_url(postgres, settings)
    if url:
        from adapters.eventstore.mailbox_locks_postgres import PostgresLocks

        return PostgresLocks(url)
    return FileLocks((db[:-3] if db.endswith(".db") else db) + ".sync.lock")


def build_worker(engine: Engine, db: str, postgres: str | None, batch_size: int,
                 settings: Settings, push: PushSettings | None = None) -> SyncWorker:
    from runners.services.sync_worker import SyncWorker

    return SyncWorker(engine, ConfiguredSources(engine.credentials,
                                                still_set=engine.credentials_still_set,
                                                settings=settings),
                      open_locks(db, postgres, settings), batch_size=batch_size, push=push)


def options_of(args: argparse.Namespace) -> LoopOptions:
    from runners.entrypoints.sync_loop import LoopOptions

    return LoopOptions(poll=args.poll, imap_interval=args.imap_interval,
                       max_attempts=args.max_attempts, backoff=args.backoff,
                       push_interval=args.push_interval)


def add_parsers(sub: Any, workers: Any, settings: Settings) -> None:
    """`crmsync run sync` and `crmsync deadletters` (called by
    runners.entrypoints.cli.build_parser)."""
    sync = workers.add_parser("sync", help="sync mailboxes from webhook deliveries and IMAP "
                              "polls (JetStream with CRMSYNC_NATS_URL, else the SQLite inbox)")
    sync.add_argument("--batch-size", type=int, default=500,
                      help="commands per event-store transaction")
    sync.add_argument("--poll", type=float, default=1.0,
                      help="seconds to wait for deliveries before looking at the log again")
    sync.add_argument("--imap-interval", type=float,
                      default=settings.IMAP_POLL_SECONDS,
                      help="seconds between IMAP polls (env CRMSYNC_IMAP_POLL_SECONDS)")
    sync.add_argument("--max-attempts", type=int, default=5,
                      help="deliveries of one webhook before it is dead-lettered")
    sync.add_argument("--backoff", type=float, default=2.0,
                      help="first retry delay in seconds (doubles per attempt, at most 300)")
    sync.add_argument("--public-url", default=None,
                      help="the webhook receiver's public base URL; Graph subscriptions send to "
                      "<url>/webhooks/graph (env CRMSYNC_PUBLIC_URL; needs "
                      "CRMSYNC_GRAPH_CLIENT_STATE)")
    sync.add_argument("--gmail-topic", default=None,
                      help="Cloud Pub/Sub topic for Gmail watches, projects/P/topics/T "
                      "(env CRMSYNC_GMAIL_TOPIC)")
    sync.add_argument("--push-interval", type=float,
                      default=settings.PUSH_INTERVAL,
                      help="seconds between checks that create and renew push subscriptions "
                      "(env CRMSYNC_PUSH_INTERVAL)")
    dead = sub.add_parser("deadletters", help="list or replay dead-lettered deliveries")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the dead letters in the queue")
    listing.add_argument("--json", action="store_true", help="print JSON")
    replay = actions.add_parser("replay", help="put dead letters back on the work queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="a dead letter id (see `deadletters list`)")
    which.add_argument("--all", action="store_true", help="every dead letter")


def run_sync(args: argparse.Namespace) -> int:
    from runners.bootstrap.config import open_engine
    from runners.bootstrap.logs import configure_logging
    from runners.entrypoints.sync_loop import run_process
    from runners.services.backoff import keep_trying

    settings: Settings = args.settings
    configure_logging(settings.LOG_LEVEL or "INFO", json=True)
    # PostgreSQL still down at start: wait for it with backoff (SIGTERM meanwhile ends the
    # process by default: no handler is installed yet)
    engine = keep_trying(lambda: open_engine(args.db, args.postgres, settings),
                         what="open the stores", stop=threading.Event())
    assert engine is not None  # never stopped
    worker = build_worker(engine, args.db, args.postgres, args.batch_size, settings,
                          push_settings(settings, args.public_url, args.gmail_topic))
    queue, affinity = open_work(args.db, args.postgres, settings, worker)
    try:
        run_process(worker, queue, options_of(args), affinity)
    finally:
        worker.locks.close()
        engine.close()
    return 0


def deadletters(args: argparse.Namespace) -> int:
    import orjson

    from domain.commands import RecordDeadLetterReplay
    from runners.bootstrap.config import open_engine

    queue = open_queue(args.db, args.settings)

    async def listing() -> list[Any]:
        try:
            return [d.as_json() for d in await queue.dead_letters()]
        finally:
            await queue.close()

    if args.action == "list":
        found = asyncio.run(listing())
        if args.json:
            sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            for d in found:
                sys.stdout.write(f"{d['id']}\t{d['provider']}\t{d['delivery_id']}\t"
                                 f"{d['tenant'] or '-'}\t{d['mailbox'] or '-'}\t"
                                 f"{d['attempts']}\t{d['error']}\n")
            if not found:
                sys.stdout.write("(nothing)\n")
        return 0
    engine = open_engine(args.db, args.postgres, args.settings)

    async def replay() -> tuple[list[Any], list[str]]:
        try:
            ids = [d.id for d in await queue.dead_letters()] if args.all else [args.id]
            done, unknown = [], []
            for ident in ids:
                try:
                    done.append(await queue.replay(ident))
                except KeyError:
                    unknown.append(ident)
            return done, unknown
        finally:
            await queue.close()

    try:
        done, unknown = asyncio.run(replay())
        from datetime import UTC, datetime

        for dead in done:
            if dead.tenant and engine.state(dead.tenant, lazy=True).seq:
                engine.execute_batch([RecordDeadLetterReplay(
                    cmd="RecordDeadLetterReplay", tenant=dead.tenant, actor="system:cli",
                    dead_letter_id=dead.id, delivery_id=dead.delivery_id)],
                    now=datetime.now(UTC), correlation_id=f"replay:{dead.id}")
            sys.stdout.write(f"replayed {dead.id} ({dead.delivery_id})\n")
        for ident in unknown:
            sys.stderr.write(f"crmsync: no dead letter {ident!r}\n")
        return 3 if unknown else 0
    finally:
        engine.close()


def start_embedded(db: str, settings: Settings) -> threading.Event:
    """An embedded `crmsync serve`: the sync worker in a thread of its own, on its own engine
    (SQLite file) and the SQLite inbox. Set the returned event to stop it."""
    from runners.entrypoints.sync_loop import LoopOptions, run
    from runners.services.engine import Engine

    stop = threading.Event()

    def main() -> None:
        engine = Engine.open_sqlite(db, settings)
        worker = build_worker(engine, db, None, 500, settings, push_settings(settings))

        async def loop() -> None:
            queue = open_queue(db, settings)
            try:
                await run(worker, queue, stop, LoopOptions(
                    push_interval=settings.PUSH_INTERVAL))
            finally:
                await queue.close()

        try:
            asyncio.run(loop())
        finally:
            engine.close()

    threading.Thread(target=main, name="crmsync-sync", daemon=True).start()
    return stop
