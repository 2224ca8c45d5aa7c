"""The `crmsync` command line's parser: every subcommand with its arguments and its handler
(`set_defaults(func=...)`, and `sharded=...` where a shard map routes it; see
runners.entrypoints.cli_handlers).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from projections.rows import PROJECTIONS
from runners.bootstrap.settings import Settings, load_settings
from runners.entrypoints import cli_handlers as do

DESCRIPTION = """The `crmsync` command line (the contract of issue #2).

Exit codes: 0 success; 1 some commands were rejected (apply) or views differ (verify);
2 usage error; 3 not found (V12); 4 store failure.
"""

def _at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset, e.g. {text}Z")
    return value


def _seconds(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError("a positive number of seconds")
    return int(text)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The parser; every parsed command carries `settings` (`args.settings`: the process's one
    Settings, built by `cli.main`; default: from the environment, read now)."""
    settings = settings or load_settings()
    parser = argparse.ArgumentParser(prog="crmsync", description=DESCRIPTION)
    parser.set_defaults(settings=settings)
    parser.add_argument("--db", default=settings.DB,
                        help="SQLite file for events and views (env CRMSYNC_DB)")
    parser.add_argument("--postgres", metavar="URL",
                        help="PostgreSQL for events and views instead of SQLite, e.g. "
                        "postgresql://user@host/db?options=-csearch_path%%3Dcrm "
                        "(env CRMSYNC_POSTGRES_URL)")
    parser.add_argument("--shard", metavar="NAME", help="with a shard map: run on this shard "
                        "(env CRMSYNC_SHARD_MAP / CRMSYNC_SHARDS; see docs/scaling.md)")
    sub = parser.add_subparsers(dest="command", required=True)

    apply = sub.add_parser("apply", help="apply JSON Lines commands from FILE or - (stdin)")
    apply.add_argument("file")
    apply.set_defaults(func=do.apply, sharded=do.sharded_apply)

    query = sub.add_parser("query", help="read a projection")
    kinds = query.add_subparsers(dest="kind", required=True)
    query.set_defaults(func=do.query)  # every kind: cli_handlers.answer picks the query

    add_query_kinds(kinds)
    batch = kinds.add_parser("batch", help="many queries in one process: one per line of FILE "
                             "(or - for stdin) in these words, e.g. `timeline --tenant acme "
                             "--viewer max --record r1`; a JSON line answers each")
    batch.add_argument("file")
    export = sub.add_parser("export", help="a tenant's events in order as JSON Lines")
    export.add_argument("--tenant", required=True)
    export.add_argument("--since", type=_at, help="from this domain time (ISO-8601)")
    export.add_argument("--until", type=_at, help="up to this domain time (ISO-8601)")
    export.add_argument("--with-content", action="store_true",
                        help="include subjects, bodies and attachment names (L2 content)")
    export.set_defaults(func=do.export)

    sub.add_parser("demo", help="tell the built-in story in a temporary database"
                   ).set_defaults(func=do.demo)
    config = sub.add_parser("config", help="the effective CRMSYNC_* settings, secrets masked")
    config.add_argument("--json", action="store_true", help="print JSON")
    config.set_defaults(func=do.config)
    rebuild = sub.add_parser("rebuild", help="rebuild projections from the event log")
    rebuild.add_argument("--projection", choices=sorted(PROJECTIONS))
    rebuild.add_argument("--parts", type=do.parts, default=None, metavar="N",
                         help="PostgreSQL: build in N processes partitioned by mailbox (default "
                              "$CRMSYNC_REBUILD_PARTS, else the number of CPUs, at most 4)")
    rebuild.set_defaults(func=do.rebuild)
    verify = sub.add_parser("verify", help="rebuild into scratch tables and compare checksums")
    verify.add_argument("--log", action="store_true",
                        help="instead: recompute each tenant's hash chain over the stored events "
                             "(E7); exit 1 naming the first position that fails")
    verify.add_argument("--tenant", help="with --log: only this tenant's chain")
    verify.set_defaults(func=do.verify)
    worker = sub.add_parser("run", help="run a worker process")
    workers = worker.add_subparsers(dest="worker", required=True)
    runner = workers.add_parser("projections", help="follow the event log, keep views current")
    runner.add_argument("--projection", action="append", choices=sorted(PROJECTIONS),
                        help="only this projection (repeatable; default: all)")
    runner.add_argument("--batch-size", type=int, default=1000)
    runner.add_argument("--poll", type=float, default=1.0,
                        help="seconds between polls when no notification arrives")
    runner.set_defaults(func=do.run_projections)
    outbox = workers.add_parser("outbox", help="execute CRM-side mail changes (sends, "
                                "deletions, read flags) at the providers")
    outbox.add_argument("--max-attempts", type=int, default=5)
    outbox.add_argument("--backoff", type=float, default=2.0,
                        help="seconds before the first retry (doubled each time)")
    outbox.add_argument("--poll", type=float, default=1.0,
                        help="seconds between polls when no notification arrives")
    outbox.set_defaults(func=do.run_outbox)
    hooks = workers.add_parser("webhooks", help="receive Gmail and Graph webhooks alone "
                               "(JetStream with CRMSYNC_NATS_URL, else a SQLite inbox)")
    hooks.add_argument("--host", default="127.0.0.1")
    hooks.add_argument("--port", type=int, default=8001)
    hooks.add_argument("--workers", type=int, default=1,
                       help="receiver processes on the port (JetStream only; default 1)")
    hooks.set_defaults(func=do.run_webhooks)
    contacts = workers.add_parser("contacts", help="Exchange / Office 365 contact sync (Graph at "
                                  "CRMSYNC_GRAPH_API_URL)")
    contacts.add_argument("--interval", type=float, default=60.0,
                          help="seconds between delta rounds of every connected book")
    contacts.add_argument("--poll", type=float, default=1.0,
                          help="seconds between polls of the event log for queued changes")
    contacts.add_argument("--once", action="store_true", help="one pass, then exit")
    contacts.set_defaults(func=do.run_contacts)
    from runners.entrypoints.sync_runner import add_parsers as add_sync_parsers

    add_sync_parsers(sub, workers, settings)  # `run sync`, `deadletters` (issue #4)
    workers.choices["sync"].set_defaults(func=do.run_sync)
    sub.choices["deadletters"].set_defaults(func=do.deadletters)
    from runners.services.import_mail import add_parser as add_import_parser

    add_import_parser(sub)  # `import-mail` (issue #13)
    sub.choices["import-mail"].set_defaults(func=do.import_mail)
    for each in workers.choices.values():  # every runner: /metrics, /healthz, /readyz
        each.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                          help="serve /metrics, /healthz and /readyz on PORT (default "
                               "$CRMSYNC_METRICS_PORT; unset or 0: off)")
    lag = sub.add_parser("lag", help="each projection's position and lag behind the event log")
    lag.add_argument("--json", action="store_true", help="print JSON")
    lag.set_defaults(func=do.lag)
    serve = sub.add_parser("serve", help="serve the HTTP API and the webhook receiver (needs "
                           "CRMSYNC_SECRET)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--outbox", action="store_true",
                       help="also run the outbox in this process (see `run outbox`)")
    serve.set_defaults(func=do.serve, sharded=do.sharded_serve)
    shard = sub.add_parser("shard", help="the shard map: list it, move a tenant")
    shard_cmds = shard.add_subparsers(dest="shard_command", required=True)
    shard_cmds.add_parser("list", help="the shards and the tenants assigned to them"
                          ).set_defaults(func=do.shard_needs_map, sharded=do.shard_list)
    move = shard_cmds.add_parser("move", help="copy a tenant to another shard, verify, flip "
                                 "the map, delete it from the source")
    move.add_argument("--tenant", required=True)
    move.add_argument("--to", required=True, metavar="SHARD")
    move.add_argument("--abort", action="store_true",
                      help="instead: delete the copy a failed move left on --to")
    move.set_defaults(func=do.shard_needs_map, sharded=do.shard_move)
    token = sub.add_parser("token", help="print a bearer token for the HTTP API")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True, help="user id (service name with --service)")
    token.add_argument("--service", action="store_true", help="a service token (any command)")
    token.add_argument("--ttl", type=_seconds, default=None, metavar="SECONDS",
                       help="seconds until the token expires (default 12 h for a user, 30 days "
                            "for a service)")
    token.set_defaults(func=do.token)
    return parser


_P = TypeVar("_P", bound=argparse.ArgumentParser)


class _LineParser(argparse.ArgumentParser):
    """Never writes or exits: the batch's stdout carries only its JSON lines."""

    def error(self, message: str) -> NoReturn:
        raise do.LineError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise do.LineError(message or "not a query (help is for the command line)")

    def print_help(self, file: Any = None) -> None:
        return None


def query_line_parser(settings: Settings) -> argparse.ArgumentParser:
    """The parser of one line of `query batch`: the query kinds, raising LineError instead of
    exiting on a line that does not parse."""
    parser = _LineParser(prog="query", add_help=False)
    parser.set_defaults(settings=settings)
    add_query_kinds(parser.add_subparsers(dest="kind", required=True))
    return parser


def add_query_kinds(kinds: argparse._SubParsersAction[_P]) -> None:
    """Every `crmsync query KIND` with its arguments (`kinds`: the subparsers action)."""

    def q(name: str, help_: str) -> _P:
        p = kinds.add_parser(name, help=help_)
        p.add_argument("--tenant", required=True)
        p.add_argument("--viewer", required=True)
        p.add_argument("--at", type=_at, help="answer as of this domain time (ISO-8601)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    q("timeline", "threads the viewer sees on a record").add_argument("--record", required=True)
    q("mailbox", "the viewer's own threads").add_argument("--label")
    q("thread", "one thread's messages").add_argument("--thread", required=True)
    explain = q("explain", "why a thread is visible or not")
    explain.add_argument("--thread", required=True)
    explain.add_argument("--record")
    q("records", "records the viewer may access").add_argument("--email")
    q("status", "mailbox sync status").add_argument("--mailbox")
    q("contact", "a contact's merge state (C8-C10)").add_argument("--record", required=True)
    q("access", "admins: every user with whether they could see a thread at --at, and why"
      ).add_argument("--thread", required=True)
    history = kinds.add_parser("access-history", help="admins: per user the intervals during "
                               "which they could see a thread")
    history.add_argument("--tenant", required=True)
    history.add_argument("--viewer", required=True)
    history.add_argument("--thread", required=True)
    history.add_argument("--json", action="store_true", help="print JSON")
    for name, help_ in (("problems", "admins: the attention list (gone, suspect, disconnected, "
                         "refused, dead letters, stale sync), each with since when and the fix"),
                        ("settings", "admins: tenant configuration, users, levels and shares")):
        admin_q = kinds.add_parser(name, help=help_)
        admin_q.add_argument("--tenant", required=True)
        admin_q.add_argument("--viewer", required=True)
        admin_q.add_argument("--json", action="store_true", help="print JSON")
        if name == "problems":
            admin_q.add_argument("--stale-after", type=_seconds, metavar="SECONDS",
                                 help="no successful sync for longer than this is a problem "
                                 "(default $CRMSYNC_STALE_SYNC_SECONDS, else 86400)")
