"""The `crmsync` command line (the contract of issue #2).

Exit codes: 0 success; 1 some commands were rejected (apply) or views differ (verify);
2 usage error; 3 not found (V12); 4 store failure.

The parser (runners.entrypoints.cli_parser) binds each subcommand to its handler
(runners.entrypoints.cli_handlers); `run` picks the shard and calls it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adapters.errors import StoreError
from runners.bootstrap.logs import configure_logging
from runners.bootstrap.settings import SettingsError, load_settings
from runners.entrypoints.cli_handlers import (
    EXIT_NOT_FOUND,
    EXIT_REJECTED,
    EXIT_STORE,
    EXIT_USAGE,
    Handler,
    ShardedHandler,
)
from runners.entrypoints.cli_parser import build_parser

__all__ = ["EXIT_NOT_FOUND", "EXIT_REJECTED", "EXIT_STORE", "EXIT_USAGE", "build_parser",
           "main", "run"]


def run(args: argparse.Namespace) -> int:
    """Point the command at its shard (with a shard map), then run its handler."""
    from runners.bootstrap import shards

    try:
        shard_map = shards.load(args.settings)
    except shards.ShardMapError as exc:
        sys.stderr.write(f"crmsync: shard map: {exc}\n")
        return EXIT_USAGE
    problem = shards.select(args, shard_map)
    if problem is not None:
        sys.stderr.write(f"crmsync: {problem}\n")
        return EXIT_USAGE
    sharded: ShardedHandler | None = getattr(args, "sharded", None)
    if shard_map is not None and sharded is not None:  # apply, serve, shard: routed by tenant
        return sharded(args, shard_map)
    handler: Handler = args.func
    if args.command != "run":
        return handler(args)
    from runners.entrypoints.health import runner_endpoints

    # every runner serves /metrics, /healthz and /readyz when given a port
    stop = runner_endpoints(args.metrics_port, args.worker, args.db, args.postgres,
                            getattr(args, "projection", None), settings=args.settings)
    try:
        return handler(args)
    finally:
        stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings()  # the process's one Settings: everything below gets it
    except SettingsError as exc:  # a CRMSYNC_* variable that does not parse
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_USAGE
    args = build_parser(settings).parse_args(argv)
    configure_logging(settings.LOG_LEVEL)
    try:
        return run(args)
    except StoreError as exc:
        sys.stderr.write(f"crmsync: {exc}\n")
        return EXIT_STORE


if __name__ == "__main__":
    raise SystemExit(main())
