"""What each `crmsync` subcommand does: one handler per subcommand, bound to its parser with
`set_defaults(func=...)` (runners.entrypoints.cli_parser) and called by runners.entrypoints.cli.

A handler takes the parsed arguments and returns the exit code. `with_engine` handlers get the
engine opened (and closed after them); `long_running` ones keep trying to open it, since
PostgreSQL may still be starting beside a runner or the server. A handler in `sharded=` runs
instead of `func` when a shard map is configured.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import orjson

from adapters.heap import map_large_blocks
from domain.errors import NotFound
from runners.bootstrap.config import open_engine, open_waiter, postgres_url
from runners.bootstrap.logs import configure_logging
from runners.bootstrap.settings import switched
from runners.services.apply import ApplyReport
from runners.services.engine import Engine

EXIT_REJECTED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE = 1, 2, 3, 4
REBUILD_PARTS_ENV = "CRMSYNC_REBUILD_PARTS"

Handler = Callable[[argparse.Namespace], int]
EngineHandler = Callable[[Engine, argparse.Namespace], int]
ShardedHandler = Callable[[argparse.Namespace, Any], int]  # (args, the shard map) -> exit code


def with_engine(handler: EngineHandler) -> Handler:
    """`handler` with the engine of `--db` / `--postgres`, closed after it."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        engine = open_engine(args.db, args.postgres, args.settings)
        try:
            return handler(engine, args)
        finally:
            engine.close()

    return run


def long_running(handler: EngineHandler) -> Handler:
    """`with_engine` for runners and the server: opening the stores is retried until it works
    (PostgreSQL may still be starting; SIGTERM ends the process meanwhile)."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from runners.services.backoff import keep_trying

        engine = keep_trying(lambda: open_engine(args.db, args.postgres, args.settings),
                             what="open the stores", stop=threading.Event())
        assert engine is not None  # never stopped
        try:
            return handler(engine, args)
        finally:
            engine.close()

    return run


# -- without an engine --------------------------------------------------------------------------
def demo(args: argparse.Namespace) -> int:
    from runners.entrypoints.demo import run_demo

    return run_demo(sys.stdout)


def config(args: argparse.Namespace) -> int:
    from runners.bootstrap.settings import print_settings

    return print_settings(args.settings, sys.stdout, as_json=args.json)


def token(args: argparse.Namespace) -> int:
    from runners.entrypoints.serve import token as print_token

    return print_token(args.tenant, args.user, args.service, args.ttl)


def run_webhooks(args: argparse.Namespace) -> int:
    from runners.entrypoints.serve import serve_webhooks

    return serve_webhooks(args.db, args.host, args.port, args.workers)


def run_sync(args: argparse.Namespace) -> int:
    from runners.entrypoints import sync_runner

    return sync_runner.run_sync(args)


def deadletters(args: argparse.Namespace) -> int:
    from runners.entrypoints import sync_runner

    return sync_runner.deadletters(args)


def shard_needs_map(args: argparse.Namespace) -> int:
    sys.stderr.write("crmsync: shard: no shard map ($CRMSYNC_SHARD_MAP or $CRMSYNC_SHARDS)\n")
    return EXIT_USAGE


# -- runners and the server ---------------------------------------------------------------------
@long_running
def run_contacts(engine: Engine, args: argparse.Namespace) -> int:
    from runners.entrypoints.contacts_runner import run_contacts as follow_contacts

    configure_logging("INFO", json=True)
    url = postgres_url(args.postgres, args.settings)
    engine.follow = url is None
    return follow_contacts(engine, url, open_waiter(engine, args.postgres, args.settings),
                           interval=args.interval, poll=args.poll, once=args.once)


@long_running
def run_outbox(engine: Engine, args: argparse.Namespace) -> int:
    from runners.services import outbox

    configure_logging("INFO", json=True)
    tracking = outbox.open_tracking(args.db, postgres_url(args.postgres, args.settings))
    try:
        worker = outbox.Outbox(engine, tracking, outbox.configured_clients(engine, args.settings),
                               max_attempts=args.max_attempts, backoff=args.backoff)
        outbox.run(worker, open_waiter(engine, args.postgres, args.settings), poll=args.poll,
                   signals=True)
    finally:
        tracking.close()
    return 0


@long_running
def run_projections(engine: Engine, args: argparse.Namespace) -> int:
    from runners.entrypoints import projection_runner

    configure_logging("INFO", json=True)
    map_large_blocks()  # the folded state's growing arrays leave no holes in the heap
    projection_runner.run(engine, open_waiter(engine, args.postgres, args.settings),
                          args.projection, batch_size=args.batch_size, poll=args.poll,
                          signals=True,
                          snapshots=switched(args.settings.RUNNER_SNAPSHOTS, default=False))
    return 0


@long_running
def serve(engine: Engine, args: argparse.Namespace) -> int:
    from runners.entrypoints.serve import serve as serve_api

    # with PostgreSQL, `crmsync run projections` processes keep the views current
    engine.follow = postgres_url(args.postgres, args.settings) is None
    stop_sync = None
    if engine.follow and engine.path is not None:
        from runners.entrypoints.sync_runner import start_embedded

        stop_sync = start_embedded(engine.path, args.settings)  # embedded: sync in-process too
    stop_outbox = None
    if args.outbox:
        from runners.services import outbox as outbox_runner

        stop_outbox = outbox_runner.in_background(args.db, args.postgres, args.settings)
    try:
        return serve_api(engine, args.host, args.port)
    finally:
        if stop_outbox is not None:
            stop_outbox()
        if stop_sync is not None:
            stop_sync.set()


# -- one-shot commands --------------------------------------------------------------------------
@with_engine
def apply(engine: Engine, args: argparse.Namespace) -> int:
    lines = read_lines(args.file)
    if lines is None:
        return EXIT_USAGE
    return report_applied(engine.apply_lines(lines))


@with_engine
def import_mail(engine: Engine, args: argparse.Namespace) -> int:
    from runners.services.import_mail import run_import

    return run_import(engine, args)


@with_engine
def lag(engine: Engine, args: argparse.Namespace) -> int:
    from runners.entrypoints.projection_runner import lag as lag_of

    print_answer(lag_of(engine), args.json)
    return 0


@with_engine
def query(engine: Engine, args: argparse.Namespace) -> int:
    if postgres_url(args.postgres, args.settings) is not None and engine.caught_up():
        # views kept by projection runners and at lag 0: read them as `serve` does,
        # without folding the whole log in this process first (60 s on 1M events)
        engine.follow = False
    if args.kind == "batch":
        return query_batch(engine, args)
    try:
        print_answer(answer(engine, args), args.json)
    except NotFound:
        sys.stderr.write("not found\n")
        return EXIT_NOT_FOUND
    return 0


# a query names a few ids and a time; no id the commands accept is near this long
MAX_QUERY_LINE = 8192


class LineError(Exception):
    """A line of `query batch` that does not parse (its argparse message)."""


def query_batch(engine: Engine, args: argparse.Namespace) -> int:
    """`crmsync query batch FILE`: each line a query in the CLI's words, answered in this one
    process (an auditor's many questions pay the process start once, not per question): a JSON
    line per query, `{"line": N, "answer": ...}` or `{"line": N, "error": ...}`, in order, each
    flushed as soon as it is answered (`-` reads stdin as it comes: a program can keep one
    process open and ask one question at a time). Exit 1 when some line was not answered (the
    others still are), 2 when FILE cannot be opened."""
    from runners.entrypoints.cli_parser import query_line_parser

    try:
        stream: BinaryIO = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        sys.stderr.write(f"crmsync: cannot read {args.file}: {exc.strerror}\n")
        return EXIT_USAGE
    parser = query_line_parser(args.settings)
    failed = 0
    with stream:
        for number, text in enumerate(_bounded_lines(stream), 1):
            if text is not None and (not text or text.startswith("#")):
                continue
            reply = {"line": number, **_answer_line(engine, parser, text)}
            failed += "error" in reply
            sys.stdout.write(orjson.dumps(reply).decode() + "\n")
            sys.stdout.flush()
    return EXIT_REJECTED if failed else 0


def _bounded_lines(stream: BinaryIO) -> Iterator[str | None]:
    """The stripped lines of a binary stream, None for one longer than MAX_QUERY_LINE (read
    past, never held: a hostile line costs no memory)."""
    while line := stream.readline(MAX_QUERY_LINE + 1):
        if len(line) > MAX_QUERY_LINE and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line.decode("utf-8", "replace").strip()


def _answer_line(engine: Engine, parser: argparse.ArgumentParser, text: str | None
                 ) -> dict[str, Any]:
    """`{"answer": ...}` or `{"error": ...}` for one line of `query batch` (None: too long)."""
    if text is None:  # refused before shlex, which is quadratic in a token's length
        return {"error": f"invalid query: longer than {MAX_QUERY_LINE} bytes"}
    try:
        return {"answer": answer(engine, parser.parse_args(shlex.split(text)))}
    except NotFound:
        return {"error": "not found"}
    except (LineError, ValueError) as exc:  # ValueError: shlex's unbalanced quotes
        return {"error": f"invalid query: {exc}"}


def answer(engine: Engine, args: argparse.Namespace) -> Any:
    """`crmsync query KIND`'s answer."""
    common = (args.tenant, args.viewer)
    if args.kind in ("access", "access-history"):
        from runners.services import audit

        if args.kind == "access":
            return audit.thread_access(engine, *common, args.thread, at=args.at)
        return audit.thread_access_history(engine, *common, args.thread)
    if args.kind in ("problems", "settings"):
        from runners.services import admin

        if args.kind == "problems":
            return admin.problems(engine, *common, stale_seconds=args.stale_after
                                  or args.settings.STALE_SYNC_SECONDS)
        return admin.settings(engine, *common)
    asked: dict[str, Callable[[], Any]] = {
        "timeline": lambda: engine.query_timeline(*common, args.record, at=args.at),
        "mailbox": lambda: engine.query_mailbox(*common, args.label, at=args.at),
        "thread": lambda: engine.query_thread(*common, args.thread, at=args.at),
        "explain": lambda: engine.query_explain(*common, args.thread, args.record, at=args.at),
        "records": lambda: engine.query_records(*common, args.email, at=args.at),
        "contact": lambda: engine.query_contact(*common, args.record, at=args.at),
        "status": lambda: engine.query_status(*common, args.mailbox, at=args.at)}
    return asked[args.kind]()


@with_engine
def export(engine: Engine, args: argparse.Namespace) -> int:
    from adapters.eventstore.scan import tenant_exists
    from runners.services.export import export_lines

    out = sys.stdout.buffer
    lines = export_lines(engine, args.tenant, args.since, args.until, args.with_content)
    first = next(lines, None)
    if first is None and not tenant_exists(engine.stores().events, args.tenant):
        sys.stderr.write("not found\n")
        return EXIT_NOT_FOUND
    if first is not None:
        out.write(first)
        for line in lines:
            out.write(line)
    out.flush()
    return 0


@with_engine
def rebuild(engine: Engine, args: argparse.Namespace) -> int:
    try:
        parts = rebuild_parts(args.parts, args.settings.REBUILD_PARTS)
    except ValueError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_USAGE
    progress, done = progress_bar(args.command)
    map_large_blocks()  # the folded state's growing arrays leave no holes in the heap
    try:
        engine.rebuild(args.projection, progress, parts=parts)
    finally:
        done()
    sys.stdout.write(f"rebuilt {args.projection or 'all projections'} up to position "
                     f"{engine.head()}\n")
    return 0


@with_engine
def verify(engine: Engine, args: argparse.Namespace) -> int:
    if args.log:
        return verify_log(engine, args.tenant)
    progress, done = progress_bar(args.command)
    try:
        results = engine.verify(progress)
    finally:
        done()
    bad = [name for name, (live, rebuilt) in results.items() if live != rebuilt]
    for name, (live, rebuilt) in results.items():
        mark = "ok" if live == rebuilt else "DIFFERS"
        sys.stdout.write(f"{name:12} {mark:8} live {live[:16]} rebuilt {rebuilt[:16]}\n")
    return 1 if bad else 0


def verify_log(engine: Engine, tenant: str | None) -> int:
    """E7: the chain of every tenant (or one); prints each stream's head to keep elsewhere."""
    check = engine.verify_log(tenant)
    if check.failure is not None:
        sys.stderr.write(f"chain broken at {check.failure}\n")
        sys.stdout.write(f"checked {check.events} events: FAILED\n")
        return 1
    for name, (seq, link) in sorted(check.heads.items()):
        sys.stdout.write(f"tenant {name} seq {seq} head {link}\n")
    unchained = f" ({check.unchained} written before the chain)" if check.unchained else ""
    sys.stdout.write(f"checked {check.events} events{unchained}: ok\n")
    return 0


# -- with a shard map (runners.bootstrap.shards): routed by tenant ------------------------------
def _open_url(args: argparse.Namespace) -> Callable[[str], Engine]:
    return lambda url: open_engine(args.db, url, args.settings)


def sharded_serve(args: argparse.Namespace, shard_map: Any) -> int:
    from runners.bootstrap import shards

    if args.outbox:
        sys.stderr.write("crmsync: with a shard map run the outbox per shard: crmsync "
                         "--shard NAME run outbox\n")
        return EXIT_USAGE
    return shards.serve_sharded(shard_map, _open_url(args), args.host, args.port)


def sharded_apply(args: argparse.Namespace, shard_map: Any) -> int:
    from runners.bootstrap import shards

    lines = read_lines(args.file)
    if lines is None:
        return EXIT_USAGE
    open_url = _open_url(args)
    report = shards.apply_routed(lines, shard_map, lambda name: open_url(shard_map.url(name)))
    return report_applied(report)


def shard_list(args: argparse.Namespace, shard_map: Any) -> int:
    print_answer(shard_map.to_json(), True)
    return 0


def shard_move(args: argparse.Namespace, shard_map: Any) -> int:
    from runners.bootstrap import shards
    from runners.services import shard_move as move

    try:
        if args.abort:
            move.abort_copy(shard_map, args.tenant, args.to, _open_url(args))
            return 0
        moved = move.move_tenant(shard_map, args.tenant, args.to, _open_url(args), say=_say)
    except shards.ShardMapError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_USAGE
    print_answer(vars(moved), True)
    return 0 if moved.deleted else EXIT_REJECTED


# -- output and arguments -----------------------------------------------------------------------
def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def print_answer(value: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        sys.stdout.write(orjson.dumps(item).decode() + "\n")
    if not items:
        sys.stdout.write("(nothing)\n")


def progress_bar(label: str) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
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


def read_lines(path: str) -> Sequence[bytes] | None:
    """The lines of `path`, or of stdin for `-`; None (said on stderr) when it cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read().splitlines()
    try:
        with open(path, "rb") as fh:
            return fh.read().splitlines()
    except OSError as exc:
        sys.stderr.write(f"crmsync: cannot read {path}: {exc.strerror}\n")
        return None


def report_applied(report: ApplyReport) -> int:
    for number, cmd, field, reason in report.rejected:
        sys.stderr.write(f"line {number}: {cmd}: {field}: {reason}\n")
    for number, warning in report.warnings:
        sys.stderr.write(f"line {number}: warning: {warning}\n")
    sys.stdout.write(report.summary() + "\n")
    return EXIT_REJECTED if report.rejected else 0


def parts(text: str) -> int:
    """`--parts`: a number of rebuild processes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("between 1 and 64")
    return value


def rebuild_parts(given: int | None, configured: str | None) -> int:
    """`--parts`, else $CRMSYNC_REBUILD_PARTS (`configured`), else the CPUs (1 to 4)."""
    if given is not None:
        return given
    if configured:
        try:
            return parts(configured)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"${REBUILD_PARTS_ENV}: {exc}") from None
    return max(1, min(4, os.cpu_count() or 1))
