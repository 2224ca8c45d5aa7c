"""Settings in one place (issue #12): every CRMSYNC_* variable typed, defaulted, documented."""

from __future__ import annotations

import re
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


def test_every_variable_the_code_names_is_a_documented_setting() -> None:
    named: set[str] = set()
    for folder in ("adapters", "runners", "projections", "domain"):
        for path in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"\bCRMSYNC_[A-Z_]*[A-Z]\b", path.read_text()))
    named -= {"CRMSYNC_WEBHOOKS"}  # the default JetStream stream's name, not a variable
    known = {PREFIX + name for name in Settings.model_fields}
    assert sorted(named - known) == []
    assert all(field.description for field in Settings.model_fields.values())


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
