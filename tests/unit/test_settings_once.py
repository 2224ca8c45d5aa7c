"""Issue #12: a process builds its `Settings` once, at its entry point, and passes them down."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from runners.bootstrap.settings import Settings, load_settings
from runners.entrypoints.cli import EXIT_NOT_FOUND, build_parser, run

ROOT = Path(__file__).resolve().parents[2]

# (module, function) that may call load_settings(). Anything else takes the Settings (or the
# values it needs) as a parameter.
ENTRY_POINTS = {("runners.entrypoints.cli", "main")}
# Builds from a given env mapping or, without Settings, from the environment: for tests,
# benchmarks and other callers that have no entry point (the CLI always passes its Settings).
FALLBACKS = {
    ("runners.bootstrap.config", "snapshot_key"),
    ("runners.bootstrap.config", "open_engine"),
    ("runners.bootstrap.config", "postgres_url"),
    ("runners.bootstrap.config_postgres", "postgres_env"),
    ("runners.bootstrap.config_postgres", "open_postgres"),
    ("runners.bootstrap.shards", "load"),
    ("runners.bootstrap.shards", "nats_names"),
    ("runners.entrypoints.cli_parser", "build_parser"),
    ("runners.entrypoints.sync_runner", "token_endpoints"),
    ("runners.entrypoints.sync_runner", "ConfiguredSources.__init__"),
    # the one service fallback: ~35 test call sites open SQLite engines without settings and
    # rely on the environment's keys; runners always pass theirs
    ("runners.services.engine", "Engine.open_sqlite"),
}
# Not threaded yet (docs/decisions/architecture.md, "One Settings per process"): remove each
# pair when its function takes the settings. The list may only shrink.
NOT_YET_THREADED = {
    ("runners.bootstrap.shards", "serve_sharded"),
    ("runners.entrypoints.contacts_runner", "_clients"),
    ("runners.entrypoints.serve", "_secret"),
    ("runners.entrypoints.serve", "max_token_age"),
    ("runners.entrypoints.serve", "serve"),
    ("runners.entrypoints.serve", "observe"),
    ("runners.entrypoints.serve", "gmail_push_auth"),
    ("runners.entrypoints.serve", "webhook_inbox"),
    ("runners.entrypoints.serve", "webhooks_from_env"),
    ("runners.entrypoints.serve", "serve_webhooks"),
}


def settings_loads(source: str) -> set[str]:
    """The qualified names of the functions in `source` that call load_settings()."""
    found: set[str] = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id == "load_settings"):
                # a nested helper counts as its enclosing top-level function or method
                found.add(".".join(scope[:2] if scope[:1] and scope[0][:1].isupper()
                                   else scope[:1]) or "<module>")
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def test_i12_only_entry_points_and_explicit_fallbacks_load_the_settings() -> None:
    calls = set()
    for folder in ("adapters", "runners", "projections", "domain"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            calls |= {(module, name) for name in settings_loads(path.read_text())}
    services = {pair for pair in calls if pair[0].startswith("runners.services.")}
    assert services <= {("runners.services.engine", "Engine.open_sqlite")}  # else: parameters
    assert calls - (ENTRY_POINTS | FALLBACKS | NOT_YET_THREADED) == set()
    assert (ENTRY_POINTS | FALLBACKS | NOT_YET_THREADED) - calls == set()  # stale entries go


def test_i12_the_load_check_sees_calls_in_functions_methods_and_nested_helpers() -> None:
    assert settings_loads(
        "def a():\n    return load_settings()\n"
        "def b(s=None):\n    def inner():\n        return load_settings().DB\n    return inner\n"
        "class C:\n    def __init__(self):\n        self.s = load_settings({})\n"
        "def d(settings):\n    return settings.DB\n"
        "x = load_settings\n") == {"a", "b", "C.__init__"}


def test_i12_a_cli_command_builds_no_settings_beyond_the_entry_points(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings()  # what cli.main does once
    built: list[type] = []
    original = Settings.__init__

    def counting(self: Settings, **values: Any) -> None:
        built.append(type(self))
        original(self, **values)

    monkeypatch.setattr(Settings, "__init__", counting)
    db = str(tmp_path / "crm.db")
    query = ["--db", db, "query", "status", "--tenant", "acme", "--viewer", "mia"]
    assert run(build_parser(settings).parse_args(query)) == EXIT_NOT_FOUND
    assert run(build_parser(settings).parse_args(["--db", db, "config", "--json"])) == 0
    assert built == []  # parser defaults, engine, keys, snapshots: all from the one object
    assert build_parser().parse_args(query).settings is not None
    assert built  # the counter sees a construction (the check above could fail)
