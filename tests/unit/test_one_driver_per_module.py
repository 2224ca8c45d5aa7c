"""A module imports at most one database or queue driver (issue #12): the technology is in the
file name (`*_sqlite`, `*_postgres`, `*_jetstream`), the port-neutral part imports none, and
the bootstrap chooses. Checked on the source (ast), for every product module."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("adapters", "runners", "projections", "domain")
# import name (or its prefix) -> the driver it loads; eventsourcing's recorders load theirs
DRIVERS = {"sqlite3": "sqlite3", "psycopg": "psycopg", "psycopg_pool": "psycopg",
           "nats": "nats", "eventsourcing.sqlite": "sqlite3",
           "eventsourcing.postgres": "psycopg"}


def driver(name: str) -> str | None:
    for prefix, loaded in DRIVERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return loaded
    return None


def imported(nodes: list[ast.stmt] | list[ast.AST]) -> list[str]:
    """The module names the given statements import (`from m import n`: `m` and `m.n`)."""
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@functools.cache
def modules() -> dict[str, ast.Module]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def test_every_module_imports_at_most_one_database_or_queue_driver() -> None:
    """Anywhere in the module, function-level imports included."""
    mixed = {}
    for name, tree in modules().items():
        drivers = {driver(i) for i in imported(list(ast.walk(tree)))} - {None}
        if len(drivers) > 1:
            mixed[name] = sorted(d for d in drivers if d)
    assert mixed == {}
    assert len(modules()) > 100  # the walk found the product code


def test_loading_a_module_loads_at_most_one_driver() -> None:
    """What a module imports when it is loaded (its top-level imports, followed through our
    own modules) reaches at most one driver: e.g. the SQLite inbox does not pull in nats
    through the JetStream one. Imports inside functions are the bootstrap's choices."""
    trees = modules()

    @functools.cache
    def reached(name: str) -> frozenset[str]:
        drivers: set[str] = set()
        for target in imported(trees[name].body):
            found = driver(target)
            if found is not None:
                drivers.add(found)
            elif target in trees and target != name:
                drivers |= reached(target)
        return frozenset(drivers)

    mixed = {name: sorted(reached(name)) for name in trees if len(reached(name)) > 1}
    assert mixed == {}
    assert reached("adapters.deliveries.work_jetstream") == {"nats"}  # followed, not skipped
    assert reached("runners.entrypoints.cli") <= {"sqlite3"}  # the embedded default
