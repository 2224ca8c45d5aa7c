"""Settings in one place (issue #12): every CRMSYNC_* variable typed, defaulted, documented."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest

from adapters.deliveries.inbox_jetstream import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX
from adapters.deliveries.pubsub_auth import GOOGLE_CERTS_URL
from adapters.deliveries.work_jetstream import DEFAULT_DURABLE
from adapters.providers.gmail.client import DEFAULT_GMAIL_API_URL
from adapters.providers.graph.client import DEFAULT_GRAPH_API_URL
from runners.bootstrap.settings import PREFIX, Settings, SettingsError, load_settings
from runners.entrypoints.cli import build_parser, main, run

ROOT = Path(__file__).resolve().parents[2]


def product_modules() -> dict[Path, str]:
    return {path: path.read_text() for folder in ("adapters", "runners", "projections", "domain")
            for path in sorted((ROOT / folder).rglob("*.py"))}


def string_constants(sources: Iterable[str]) -> dict[str, set[str]]:
    """Module-level `NAME = "text"` (and `A, B = "x", "y"`) of every module, by name."""
    found: dict[str, set[str]] = {}
    for source in sources:
        for node in ast.parse(source).body:
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts, strict=False)
                         if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                         else [(target, node.value)])
                for name, value in pairs:
                    if isinstance(name, ast.Name) and isinstance(value, ast.Constant) \
                            and isinstance(value.value, str):
                        found.setdefault(name.id, set()).add(value.value)
    return found


def environment_reads(source: str, constants: dict[str, set[str]]) -> list[str]:
    """Each read of the process environment that may be of a CRMSYNC_* variable: a key looked
    up in `os.environ` (`get`, `[...]`, `in`, `setdefault`, `os.getenv`) that is, or may be, a
    CRMSYNC_ name, or the whole `os.environ` handed on (whoever takes it reads it). Writes
    (`os.environ[K] = v`, `update`, `pop`) hand values to child processes and are not reads."""

    def names(key: ast.expr | None) -> set[str]:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return {key.value}
        if isinstance(key, ast.Name | ast.Attribute):
            found = constants.get(key.id if isinstance(key, ast.Name) else key.attr)
            if found:
                return found
        return {"CRMSYNC_?"}  # computed: it may be one of ours

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" \
            and isinstance(node.value, ast.Name) and node.value.id == "os"

    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = []
    for node in ast.walk(tree):
        keys: set[str] | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "getenv" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "os":
            keys = names(node.args[0] if node.args else None)
        elif is_environ(node):
            parent = parents[node]
            if isinstance(parent, ast.Attribute) and parent.attr in ("update", "pop"):
                continue
            if isinstance(parent, ast.Attribute) and parent.attr in ("get", "setdefault"):
                call = parents[parent]
                keys = names(call.args[0] if isinstance(call, ast.Call) and call.args else None)
            elif isinstance(parent, ast.Subscript):
                if not isinstance(parent.ctx, ast.Load):
                    continue
                keys = names(parent.slice)
            elif isinstance(parent, ast.Compare):
                keys = names(parent.left)
            else:
                keys = {"CRMSYNC_?"}  # the mapping itself, handed on
        if keys and any(key.startswith("CRMSYNC_") for key in keys):
            reads.append(f"line {node.lineno}: {sorted(keys)}")
    return reads


def test_every_variable_the_code_names_is_a_documented_setting_read_in_settings_only() -> None:
    modules = product_modules()
    named: set[str] = set()
    for source in modules.values():
        named |= set(re.findall(r"\bCRMSYNC_[A-Z_]*[A-Z]\b", source))
    named -= {"CRMSYNC_WEBHOOKS"}  # the default JetStream stream's name, not a variable
    known = {PREFIX + name for name in Settings.model_fields}
    assert sorted(named - known) == []
    assert all(field.description for field in Settings.model_fields.values())
    # ...and read from the environment in one place: runners/bootstrap/settings.py
    constants = string_constants(modules.values())
    reads = {str(path.relative_to(ROOT)): found for path, source in modules.items()
             if path != ROOT / "runners" / "bootstrap" / "settings.py"
             and (found := environment_reads(source, constants))}
    assert reads == {}


def test_the_environment_read_check_sees_reads_and_lets_writes_pass() -> None:
    constants = {"KEY_ENV": {"CRMSYNC_CONTENT_KEY"}, "OTHER": {"PGUSER"}}
    assert len(environment_reads(
        "import os\n"
        "a = os.environ.get(KEY_ENV)\n"
        "b = os.environ['CRMSYNC_DB']\n"
        "c = 'CRMSYNC_DB' in os.environ\n"
        "d = os.getenv(name)\n"
        "e = load(os.environ)\n", constants)) == 5
    assert environment_reads(
        "import os\n"
        "a = os.environ.get(OTHER)\n"
        "os.environ['CRMSYNC_DB'] = 'x'\n"
        "os.environ.update(names())\n"
        "os.environ.pop('CRMSYNC_DB', None)\n", constants) == []


def test_defaults_match_the_adapters_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(PREFIX + name, raising=False)
    found = load_settings()
    assert (found.GMAIL_API_URL, found.GRAPH_API_URL) == (DEFAULT_GMAIL_API_URL,
                                                          DEFAULT_GRAPH_API_URL)
    assert (found.NATS_STREAM, found.NATS_SUBJECT_PREFIX, found.NATS_DURABLE) == (
        DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, DEFAULT_DURABLE)
    assert found.GOOGLE_CERTS_URL == GOOGLE_CERTS_URL
    assert (found.DB, found.NATS_ACK_WAIT, found.SNAPSHOT_EVERY, found.SMTP_PORT) == (
        "./crmsync.db", 120.0, 10_000, 587)
    assert found.model_fields_set == set()


def test_the_environment_is_read_when_the_settings_are_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_NATS_ACK_WAIT", "4")
    monkeypatch.setenv("CRMSYNC_DB", "")  # empty counts as unset, as `get(...) or default` did
    found = load_settings()
    assert (found.NATS_ACK_WAIT, found.DB) == (4.0, "./crmsync.db")
    monkeypatch.setenv("CRMSYNC_SNAPSHOT_EVERY", "many")
    with pytest.raises(SettingsError, match=r"^CRMSYNC_SNAPSHOT_EVERY: Input should be"):
        load_settings()
    assert main(["config"]) == 2  # the CLI names the variable and exits like a usage error


def test_a_given_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_SMTP_PORT", "2525")
    found = load_settings({"CRMSYNC_GMAIL_API_URL": "http://gmail.test", "PATH": "/bin",
                           "CRMSYNC_NOT_A_SETTING": "x"})
    assert (found.GMAIL_API_URL, found.SMTP_PORT) == ("http://gmail.test", 587)


def test_config_prints_the_effective_settings_with_secrets_masked(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `run`, not `main`: main configures structlog onto this test's captured stderr
    secret, client = "s3cret-" + "x" * 32, "client-secret-value"
    monkeypatch.setenv("CRMSYNC_SECRET", secret)
    monkeypatch.setenv("CRMSYNC_GOOGLE_CLIENT_SECRET", client)
    monkeypatch.setenv("CRMSYNC_NATS_ACK_WAIT", "4")
    monkeypatch.delenv("CRMSYNC_PUSH_INTERVAL", raising=False)
    assert run(build_parser().parse_args(["config", "--json"])) == 0
    out = capsys.readouterr().out
    assert secret not in out and client not in out
    rows = {row["name"]: row for row in orjson.loads(out)}
    assert len(rows) == len(Settings.model_fields)
    assert rows["CRMSYNC_SECRET"] == {**rows["CRMSYNC_SECRET"], "value": "***", "source": "env"}
    assert (rows["CRMSYNC_NATS_ACK_WAIT"]["value"], rows["CRMSYNC_NATS_ACK_WAIT"]["source"]) == (
        4.0, "env")
    assert (rows["CRMSYNC_PUSH_INTERVAL"]["value"], rows["CRMSYNC_PUSH_INTERVAL"]["source"]) == (
        300.0, "default")
    assert run(build_parser().parse_args(["config"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "CRMSYNC_GOOGLE_CLIENT_SECRET=***  # env: Google OAuth client secret" in lines
    assert len(lines) == len(Settings.model_fields)
