"""The `crmsync` command line (the contract of issue #2).

Exit codes: 0 success; 1 some commands were rejected (apply) or views differ (verify);
2 usage error; 3 not found (V12); 4 store failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from adapters.errors import StoreError
from domain.errors import NotFound
from projections.rows import PROJECTIONS
from runners.bootstrap.config import open_engine, open_waiter, postgres_url
from runners.bootstrap.logs import configure_logging
from runners.bootstrap.settings import SettingsError, load_settings
from runners.services.engine import ApplyReport, Engine

EXIT_REJECTED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE = 1, 2, 3, 4
REBUILD_PARTS_ENV = "CRMSYNC_REBUILD_PARTS"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crmsync", description=__doc__)
    parser.add_argument("--db", default=load_settings().DB,
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

    query = sub.add_parser("query", help="read a projection")
    kinds = query.add_subparsers(dest="kind", required=True)

    def q(name: str, help_: str) -> argparse.ArgumentParser:
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
    export = sub.add_parser("export", help="a tenant's events in order as JSON Lines")
    export.add_argument("--tenant", required=True)
    export.add_argument("--since", type=_at, help="from this domain time (ISO-8601)")
    export.add_argument("--until", type=_at, help="up to this domain time (ISO-8601)")
    export.add_argument("--with-content", action="store_true",
                        help="include subjects, bodies and attachment names (L2 content)")

    sub.add_parser("demo", help="tell the built-in story in a temporary database")
    config = sub.add_parser("config", help="the effective CRMSYNC_* settings, secrets masked")
    config.add_argument("--json", action="store_true", help="print JSON")
    rebuild = sub.add_parser("rebuild", help="rebuild projections from the event log")
    rebuild.add_argument("--projection", choices=sorted(PROJECTIONS))
    rebuild.add_argument("--parts", type=_parts, default=None, metavar="N",
                         help="PostgreSQL: build in N processes partitioned by mailbox (default "
                              "$CRMSYNC_REBUILD_PARTS, else the number of CPUs, at most 4)")
    verify = sub.add_parser("verify", help="rebuild into scratch tables and compare checksums")
    verify.add_argument("--log", action="store_true",
                        help="instead: recompute each tenant's hash chain over the stored events "
                             "(E7); exit 1 naming the first position that fails")
    verify.add_argument("--tenant", help="with --log: only this tenant's chain")
    worker = sub.add_parser("run", help="run a worker process")
    workers = worker.add_subparsers(dest="worker", required=True)
    runner = workers.add_parser("projections", help="follow the event log, keep views current")
    runner.add_argument("--projection", action="append", choices=sorted(PROJECTIONS),
                        help="only this projection (repeatable; default: all)")
    runner.add_argument("--batch-size", type=int, default=1000)
    runner.add_argument("--poll", type=float, default=1.0,
                        help="seconds between polls when no notification arrives")
    outbox = workers.add_parser("outbox", help="execute CRM-side mail changes (sends, "
                                "deletions, read flags) at the providers")
    outbox.add_argument("--max-attempts", type=int, default=5)
    outbox.add_argument("--backoff", type=float, default=2.0,
                        help="seconds before the first retry (doubled each time)")
    outbox.add_argument("--poll", type=float, default=1.0,
                        help="seconds between polls when no notification arrives")
    hooks = workers.add_parser("webhooks", help="receive Gmail and Graph webhooks alone "
                               "(JetStream with CRMSYNC_NATS_URL, else a SQLite inbox)")
    hooks.add_argument("--host", default="127.0.0.1")
    hooks.add_argument("--port", type=int, default=8001)
    hooks.add_argument("--workers", type=int, default=1,
                       help="receiver processes on the port (JetStream only; default 1)")
    contacts = workers.add_parser("contacts", help="Exchange / Office 365 contact sync (Graph at "
                                  "CRMSYNC_GRAPH_API_URL)")
    contacts.add_argument("--interval", type=float, default=60.0,
                          help="seconds between delta rounds of every connected book")
    contacts.add_argument("--poll", type=float, default=1.0,
                          help="seconds between polls of the event log for queued changes")
    contacts.add_argument("--once", action="store_true", help="one pass, then exit")
    from runners.entrypoints.sync_runner import add_parsers as add_sync_parsers

    add_sync_parsers(sub, workers)  # `run sync`, `deadletters` (issue #4)
    from runners.services.import_mail import add_parser as add_import_parser

    add_import_parser(sub)  # `import-mail` (issue #13)
    for each in workers.choices.values():  # every runner: /metrics, /healthz, /readyz
        each.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                          help="serve /metrics, /healthz and /readyz on PORT (default "
                               "$CRMSYNC_METRICS_PORT; unset or 0: off)")
    lag = sub.add_parser("lag", help="each projection's position and lag behind the event log")
    lag.add_argument("--json", action="store_true", help="print JSON")
    serve = sub.add_parser("serve", help="serve the HTTP API and the webhook receiver (needs "
                           "CRMSYNC_SECRET)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--outbox", action="store_true",
                       help="also run the outbox in this process (see `run outbox`)")
    shard = sub.add_parser("shard", help="the shard map: list it, move a tenant")
    shard_cmds = shard.add_subparsers(dest="shard_command", required=True)
    shard_cmds.add_parser("list", help="the shards and the tenants assigned to them")
    move = shard_cmds.add_parser("move", help="copy a tenant to another shard, verify, flip "
                                 "the map, delete it from the source")
    move.add_argument("--tenant", required=True)
    move.add_argument("--to", required=True, metavar="SHARD")
    move.add_argument("--abort", action="store_true",
                      help="instead: delete the copy a failed move left on --to")
    token = sub.add_parser("token", help="print a bearer token for the HTTP API")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True, help="user id (service name with --service)")
    token.add_argument("--service", action="store_true", help="a service token (any command)")
    token.add_argument("--ttl", type=_seconds, default=None, metavar="SECONDS",
                       help="seconds until the token expires (default 12 h for a user, 30 days "
                            "for a service)")
    return parser


def _progress(label: str) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A rich progress bar on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        sys.stdout.write(orjson.dumps(item).decode() + "\n")
    if not items:
        sys.stdout.write("(nothing)\n")


def _query(engine: Engine, args: argparse.Namespace) -> Any:
    common = (args.tenant, args.viewer)
    if args.kind == "timeline":
        return engine.query_timeline(*common, args.record, at=args.at)
    if args.kind == "mailbox":
        return engine.query_mailbox(*common, args.label, at=args.at)
    if args.kind == "thread":
        return engine.query_thread(*common, args.thread, at=args.at)
    if args.kind == "explain":
        return engine.query_explain(*common, args.thread, args.record, at=args.at)
    if args.kind == "records":
        return engine.query_records(*common, args.email, at=args.at)
    if args.kind == "contact":
        return engine.query_contact(*common, args.record, at=args.at)
    if args.kind in ("access", "access-history"):
        from runners.services import audit

        if args.kind == "access":
            return audit.thread_access(engine, *common, args.thread, at=args.at)
        return audit.thread_access_history(engine, *common, args.thread)
    if args.kind in ("problems", "settings"):
        from runners.services import admin

        if args.kind == "problems":
            return admin.problems(engine, *common, stale_seconds=args.stale_after
                                  or load_settings().STALE_SYNC_SECONDS)
        return admin.settings(engine, *common)
    return engine.query_status(*common, args.mailbox, at=args.at)


def run(args: argparse.Namespace) -> int:
    from runners.bootstrap import shards

    try:
        shard_map = shards.load()
    except shards.ShardMapError as exc:
        sys.stderr.write(f"crmsync: shard map: {exc}\n")
        return EXIT_USAGE
    problem = shards.select(args, shard_map)
    if problem is not None:
        sys.stderr.write(f"crmsync: {problem}\n")
        return EXIT_USAGE
    if shard_map is not None and args.command in ("apply", "serve", "shard"):
        return _sharded(args, shard_map)
    if args.command == "shard":
        sys.stderr.write("crmsync: shard: no shard map ($CRMSYNC_SHARD_MAP or "
                         "$CRMSYNC_SHARDS)\n")
        return EXIT_USAGE
    if args.command == "run":
        from runners.entrypoints.health import runner_endpoints

        stop = runner_endpoints(args.metrics_port, args.worker, args.db, args.postgres,
                                getattr(args, "projection", None))
        try:
            return _run(args)
        finally:
            stop()
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from runners.entrypoints.demo import run_demo

        return run_demo(sys.stdout)
    if args.command == "config":
        from runners.bootstrap.settings import print_settings

        return print_settings(load_settings(), sys.stdout, as_json=args.json)
    if args.command == "token":
        from runners.entrypoints.serve import token

        return token(args.tenant, args.user, args.service, args.ttl)
    if args.command == "run" and args.worker == "webhooks":
        from runners.entrypoints.serve import serve_webhooks

        return serve_webhooks(args.db, args.host, args.port, args.workers)
    if (args.command == "run" and args.worker == "sync") or args.command == "deadletters":
        from runners.entrypoints import sync_runner

        return sync_runner.run_sync(args) if args.command == "run" else \
            sync_runner.deadletters(args)
    if args.command in ("run", "serve"):  # long-running: PostgreSQL may still be starting
        from runners.entrypoints.backoff import keep_trying

        opened = keep_trying(lambda: open_engine(args.db, args.postgres),
                             what="open the stores", stop=threading.Event())
        assert opened is not None  # never stopped (SIGTERM ends the process meanwhile)
        engine = opened
    else:
        engine = open_engine(args.db, args.postgres)
    try:
        if args.command == "run" and args.worker == "contacts":
            from runners.services.contact_sync import run_contacts

            configure_logging("INFO", json=True)
            engine.follow = postgres_url(args.postgres) is None
            return run_contacts(engine, postgres_url(args.postgres),
                                open_waiter(engine, args.postgres), interval=args.interval,
                                poll=args.poll, once=args.once)
        if args.command == "run" and args.worker == "outbox":
            from runners.services import outbox

            configure_logging("INFO", json=True)
            tracking = outbox.open_tracking(args.db, postgres_url(args.postgres))
            try:
                worker = outbox.Outbox(engine, tracking, outbox.configured_clients(engine),
                                       max_attempts=args.max_attempts, backoff=args.backoff)
                outbox.run_until_signalled(worker, open_waiter(engine, args.postgres),
                                           poll=args.poll)
            finally:
                tracking.close()
            return 0
        if args.command == "run":
            from runners.entrypoints.projection_runner import run_until_signalled

            configure_logging("INFO", json=True)
            run_until_signalled(engine, open_waiter(engine, args.postgres), args.projection,
                                batch_size=args.batch_size, poll=args.poll,
                                snapshots=load_settings().RUNNER_SNAPSHOTS
                                .lower() in ("on", "1", "true", "yes"))
            return 0
        if args.command == "lag":
            from runners.entrypoints.projection_runner import lag

            _print(lag(engine), args.json)
            return 0
        if args.command == "serve":
            from runners.entrypoints.serve import serve

            # with PostgreSQL, `crmsync run projections` processes keep the views current
            engine.follow = postgres_url(args.postgres) is None
            stop_sync = None
            if engine.follow and engine.path is not None:
                from runners.entrypoints.sync_runner import start_embedded

                stop_sync = start_embedded(engine.path)  # embedded: sync in-process too
            stop_outbox = None
            if args.outbox:
                from runners.services import outbox as outbox_runner

                stop_outbox = outbox_runner.in_background(args.db, args.postgres)
            try:
                return serve(engine, args.host, args.port)
            finally:
                if stop_outbox is not None:
                    stop_outbox()
                if stop_sync is not None:
                    stop_sync.set()
            return serve(engine, args.host, args.port)
        if args.command == "import-mail":
            from runners.services.import_mail import run_import

            return run_import(engine, args)
        if args.command == "apply":
            lines = sys.stdin.buffer.read().splitlines() if args.file == "-" else \
                _read_lines(args.file)
            if lines is None:
                return EXIT_USAGE
            return _report_applied(engine.apply_lines(lines))
        if args.command == "export":
            return _export(engine, args)
        if args.command == "query":
            if postgres_url(args.postgres) is not None and _caught_up(engine):
                # views kept by projection runners and at lag 0: read them as `serve` does,
                # without folding the whole log in this process first (60 s on 1M events)
                engine.follow = False
            try:
                _print(_query(engine, args), args.json)
            except NotFound:
                sys.stderr.write("not found\n")
                return EXIT_NOT_FOUND
            return 0
        if args.command == "verify" and args.log:
            return _verify_log(engine, args.tenant)
        progress, done = _progress(args.command)
        try:
            if args.command == "rebuild":
                try:
                    parts = _rebuild_parts(args.parts)
                except ValueError as exc:
                    sys.stderr.write(f"crmsync: {exc}\n")
                    return EXIT_USAGE
                engine.rebuild(args.projection, progress, parts=parts)
                sys.stdout.write(f"rebuilt {args.projection or 'all projections'} up to position "
                                 f"{engine.store.max_position()}\n")
                return 0
            results = engine.verify(progress)
        finally:
            done()
        bad = [name for name, (live, rebuilt) in results.items() if live != rebuilt]
        for name, (live, rebuilt) in results.items():
            mark = "ok" if live == rebuilt else "DIFFERS"
            sys.stdout.write(f"{name:12} {mark:8} live {live[:16]} rebuilt {rebuilt[:16]}\n")
        return 1 if bad else 0
    finally:
        engine.close()


def _sharded(args: argparse.Namespace, shard_map: Any) -> int:
    """apply, serve and shard with a shard map (runners.bootstrap.shards): routed by tenant."""
    from runners.bootstrap import shards

    def open_url(url: str) -> Engine:
        return open_engine(args.db, url)

    if args.command == "serve":
        if args.outbox:
            sys.stderr.write("crmsync: with a shard map run the outbox per shard: crmsync "
                             "--shard NAME run outbox\n")
            return EXIT_USAGE
        return shards.serve_sharded(shard_map, open_url, args.host, args.port)
    if args.command == "shard":
        from runners.services import shard_move

        if args.shard_command == "list":
            _print(shard_map.to_json(), True)
            return 0
        try:
            if args.abort:
                shard_move.abort_copy(shard_map, args.tenant, args.to, open_url)
                return 0
            moved = shard_move.move_tenant(shard_map, args.tenant, args.to, open_url,
                                           say=_say)
        except shards.ShardMapError as exc:
            sys.stderr.write(f"crmsync: {exc}\n")
            return EXIT_USAGE
        _print(vars(moved), True)
        return 0 if moved.deleted else EXIT_REJECTED
    lines = sys.stdin.buffer.read().splitlines() if args.file == "-" else _read_lines(args.file)
    if lines is None:
        return EXIT_USAGE
    report = shards.apply_routed(lines, shard_map,
                                 lambda name: open_url(shard_map.url(name)))
    return _report_applied(report)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def _read_lines(path: str) -> Sequence[bytes] | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().splitlines()
    except OSError as exc:
        sys.stderr.write(f"crmsync: cannot read {path}: {exc.strerror}\n")
        return None


def _report_applied(report: ApplyReport) -> int:
    for number, cmd, field, reason in report.rejected:
        sys.stderr.write(f"line {number}: {cmd}: {field}: {reason}\n")
    for number, warning in report.warnings:
        sys.stderr.write(f"line {number}: warning: {warning}\n")
    sys.stdout.write(report.summary() + "\n")
    return EXIT_REJECTED if report.rejected else 0


def _caught_up(engine: Engine) -> bool:
    positions = engine.views.positions()
    end = engine.store.max_position()
    return all(positions.get(name, 0) >= end for name in PROJECTIONS)


def _export(engine: Engine, args: argparse.Namespace) -> int:
    from adapters.eventstore.scan import tenant_exists
    from runners.services.export import export_lines

    out = sys.stdout.buffer
    lines = export_lines(engine, args.tenant, args.since, args.until, args.with_content)
    first = next(lines, None)
    if first is None and not tenant_exists(engine.store, args.tenant):
        sys.stderr.write("not found\n")
        return EXIT_NOT_FOUND
    if first is not None:
        out.write(first)
        for line in lines:
            out.write(line)
    out.flush()
    return 0


def _verify_log(engine: Engine, tenant: str | None) -> int:
    """E7: the chain of every tenant (or one); prints each stream's head to keep elsewhere."""
    check = engine.store.verify_log(tenant)
    if check.failure is not None:
        sys.stderr.write(f"chain broken at {check.failure}\n")
        sys.stdout.write(f"checked {check.events} events: FAILED\n")
        return 1
    for name, (seq, link) in sorted(check.heads.items()):
        sys.stdout.write(f"tenant {name} seq {seq} head {link}\n")
    unchained = f" ({check.unchained} written before the chain)" if check.unchained else ""
    sys.stdout.write(f"checked {check.events} events{unchained}: ok\n")
    return 0


def _parts(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("between 1 and 64")
    return value


def _rebuild_parts(given: int | None) -> int:
    if given is not None:
        return given
    configured = load_settings().REBUILD_PARTS
    if configured:
        try:
            return _parts(configured)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"${REBUILD_PARTS_ENV}: {exc}") from None
    return max(1, min(4, os.cpu_count() or 1))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SettingsError as exc:  # a CRMSYNC_* variable that does not parse
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_USAGE
    configure_logging()
    try:
        return run(args)
    except StoreError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_STORE


if __name__ == "__main__":
    raise SystemExit(main())
