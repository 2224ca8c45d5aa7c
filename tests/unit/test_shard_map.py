"""The shard map (issue #15, past one machine): its two forms, validation, routing of tenants,
runners' NATS names per shard, and JSON Lines commands split by tenant with their line numbers."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from runners.bootstrap import shards
from runners.bootstrap.shards import DEFAULT, ShardMap, ShardMapError
from runners.services.apply import ApplyReport

A = "postgresql://pg@h1/crm"
B = "postgresql://pg@h2/crm?options=-csearch_path%3Deu"


def test_line_form_names_shards_and_assigns_tenants() -> None:
    found = shards.parse_line(f" default={A} ; eu={B};acme:eu; globex:eu ;solo:default;")
    assert found.shards == {"default": A, "eu": B}
    assert found.tenants == {"acme": "eu", "globex": "eu"}  # default assignments dropped
    assert [found.shard_of(t) for t in ("acme", "globex", "solo", "new")] == \
        ["eu", "eu", DEFAULT, DEFAULT]
    assert found.url_of("acme") == B and found.url_of("new") == A


def test_json_form_equals_the_line_form(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"shards": {"default": A, "eu": B}, "tenants": {"acme": "eu"}}))
    loaded = shards.load({shards.SHARD_MAP_ENV: str(path)})
    assert loaded is not None and loaded.path == str(path)
    assert (loaded.shards, loaded.tenants) == (
        shards.parse_line(f"default={A};eu={B};acme:eu").shards, {"acme": "eu"})
    assert shards.load({}) is None


@pytest.mark.parametrize(("text", "reason"), [
    (f"eu={B}", "no shard named 'default'"),
    (f"default={A};eu={A}", "same database and schema"),
    (f"default={A};acme:mars", "no shard named 'mars'"),
    (f"default={A};EU={B}", "lowercase"),
    (f"default={A};default={B}", "named twice"),
    (f"default={A};acme:default;acme:default", "assigned twice"),
    (f"default={A};nonsense", "neither NAME=URL nor TENANT:SHARD"),
    ("default=just words", "not a PostgreSQL URL"),
])
def test_malformed_maps_are_refused_naming_the_entry(text: str, reason: str) -> None:
    with pytest.raises(ShardMapError, match=reason):
        shards.parse_line(text)


def test_map_file_errors_and_both_forms_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"shards": {"default": 5}}')
    with pytest.raises(ShardMapError, match="a string"):
        shards.load({shards.SHARD_MAP_ENV: str(path)})
    path.write_text('{"shards": {"default": "x"}, "extra": 1}')
    with pytest.raises(ShardMapError, match="unknown keys"):
        shards.load({shards.SHARD_MAP_ENV: str(path)})
    with pytest.raises(ShardMapError, match="not both"):
        shards.load({shards.SHARD_MAP_ENV: str(path), shards.SHARDS_ENV: f"default={A}"})
    with pytest.raises(ShardMapError, match="No such file"):
        shards.load({shards.SHARD_MAP_ENV: str(tmp_path / "missing.json")})


def test_move_flips_one_tenant_and_save_rewrites_the_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    start = ShardMap({"default": A, "eu": B}, {"acme": "eu"}, str(path))
    moved = start.moved("acme", DEFAULT).moved("globex", "eu")
    assert moved.tenants == {"globex": "eu"} and start.tenants == {"acme": "eu"}
    shards.save(moved)
    again = shards.load({shards.SHARD_MAP_ENV: str(path)})
    assert again is not None and again.tenants == {"globex": "eu"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json"]  # no temporary left


def test_nats_names_per_shard_never_overlap() -> None:
    env: dict[str, str] = {}
    default, eu = shards.nats_names(DEFAULT, env), shards.nats_names("eu-west", env)
    assert default == {"CRMSYNC_NATS_STREAM": "CRMSYNC_WEBHOOKS",
                       "CRMSYNC_NATS_SUBJECT_PREFIX": "crmsync.webhooks",
                       "CRMSYNC_NATS_DURABLE": "crmsync-sync"}  # one shard: as before
    assert eu == {"CRMSYNC_NATS_STREAM": "CRMSYNC_WEBHOOKS_EU_WEST",
                  "CRMSYNC_NATS_SUBJECT_PREFIX": "crmsync.webhooks-eu-west",
                  "CRMSYNC_NATS_DURABLE": "crmsync-sync-eu-west"}
    # `<prefix>.>` of one stream does not match the other's subjects
    assert not eu["CRMSYNC_NATS_SUBJECT_PREFIX"].startswith(
        default["CRMSYNC_NATS_SUBJECT_PREFIX"] + ".")


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"shard": None, "postgres": None, "command": "run"}
    return argparse.Namespace(**{**base, **kw})


def test_select_points_commands_at_their_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CRMSYNC_NATS_STREAM", "CRMSYNC_NATS_SUBJECT_PREFIX", "CRMSYNC_NATS_DURABLE"):
        monkeypatch.delenv(name, raising=False)
    found = shards.parse_line(f"default={A};eu={B};acme:eu")
    runner = _args(shard="eu")
    assert shards.select(runner, found) is None and runner.postgres == B
    assert os.environ["CRMSYNC_NATS_DURABLE"] == "crmsync-sync-eu"
    query = _args(command="query", tenant="acme")
    assert shards.select(query, found) is None and query.postgres == B
    other = _args(command="export", tenant="new")
    assert shards.select(other, found) is None and other.postgres == A
    assert "needs --shard" in (shards.select(_args(), found) or "")
    assert "lives on shard 'eu', not 'default'" in (
        shards.select(_args(command="query", tenant="acme", shard="default"), found) or "")
    assert "drop --shard" in (shards.select(_args(command="apply", shard="eu"), found) or "")
    assert shards.select(_args(command="token", tenant="acme"), found) is None
    assert "no shard named 'mars'" in (shards.select(_args(shard="mars"), found) or "")
    assert "the map names" in (shards.select(_args(shard="eu", postgres=A), found) or "")
    assert "needs a shard map" in (shards.select(_args(shard="eu"), None) or "")
    unsharded = _args()
    assert shards.select(unsharded, None) is None and unsharded.postgres is None


class FakeEngine:
    """Applies every line with a tenant, rejects the rest, and remembers what it was given."""

    def __init__(self, name: str, given: dict[str, list[bytes]]) -> None:
        self.name, self.given = name, given

    def apply_lines(self, lines: list[bytes]) -> ApplyReport:
        self.given[self.name] = [line for line in lines if line.strip()]
        report = ApplyReport()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if shards.line_tenant(line) is None:
                report.rejected.append((number, "?", "json", "not a command"))
                report.results.append((number, "rejected"))
            else:
                report.applied += 1
                report.results.append((number, "applied"))
        return report

    def close(self) -> None:
        pass


def test_apply_routed_sends_each_line_to_its_tenants_shard_keeping_line_numbers() -> None:
    found = shards.parse_line(f"default={A};eu={B};acme:eu")
    lines = [orjson.dumps({"cmd": "AddUser", "tenant": t, "user": f"u{i}"})
             for i, t in enumerate(["acme", "beta", "acme", "gamma"])]
    lines.insert(2, b"")
    lines.append(b"{not json")
    given: dict[str, list[bytes]] = {}
    report = shards.apply_routed(lines, found,
                                 lambda name: FakeEngine(name, given))  # type: ignore[return-value]
    assert given == {"eu": [lines[0], lines[3]], DEFAULT: [lines[1], lines[4], lines[5]]}
    assert report.applied == 4 and report.rejected == [(6, "?", "json", "not a command")]
    assert [n for n, _ in report.results] == [1, 2, 4, 5, 6]  # numbers of the whole input
