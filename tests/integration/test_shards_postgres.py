"""Tenant-sharded event stores (issue #15, past one machine): two shard schemas on the one
PostgreSQL server, tenants on both, commands and queries routed by tenant (CLI and HTTP), no row
of a tenant in the other shard, and `crmsync shard move` keeping events, chain and answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from conftest import POSTGRES_URL
from histories import history
from loopback import Server

from adapters.eventstore.store import stream_id
from adapters.http.api import create_app
from adapters.http.tokens import issue
from domain.errors import NotFound
from runners.bootstrap import shards
from runners.bootstrap.config import open_engine
from runners.entrypoints.cli import main
from runners.services.engine import Engine

pytestmark = pytest.mark.integration
SECRET = b"s" * 32
USERS = [f"u{i}" for i in range(5)]
RECORDS = ("c0", "l0", "d0", "c1", "l1", "d1")
THREADS = sorted(f"mb{m}:{t}" for m in range(3) for t in ("t1", "t2", "t3"))


def _try(ask: Callable[[], Any]) -> Any:
    try:
        return ask()
    except NotFound:
        return "not found"


def answers(engine: Engine, tenant: str) -> dict[str, Any]:
    """Every mailbox, records, timeline, thread and explain answer of a `history` tenant."""
    out: dict[str, Any] = {}
    for v in USERS:
        out[f"mailbox/{v}"] = _try(lambda v=v: engine.query_mailbox(tenant, v))
        out[f"records/{v}"] = _try(lambda v=v: engine.query_records(tenant, v))
        for r in RECORDS:
            out[f"timeline/{v}/{r}"] = _try(lambda v=v, r=r: engine.query_timeline(tenant, v, r))
        for t in THREADS:
            out[f"thread/{v}/{t}"] = _try(lambda v=v, t=t: engine.query_thread(tenant, v, t))
            out[f"explain/{v}/{t}"] = _try(lambda v=v, t=t: engine.query_explain(tenant, v, t))
    return out


def _schema(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


def rows_of(url: str, tenant: str) -> dict[str, int]:
    """Every row naming `tenant` in the shard's schema: its events and each table's rows."""
    schema = _schema(url)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND "
            "column_name = 'tenant'", (schema,)).fetchall()]
        out = {t: int(conn.execute(f'SELECT count(*) FROM "{schema}"."{t}" WHERE tenant = %s',
                                   (tenant,)).fetchone()[0])  # type: ignore[index]
               for t in tables}
        out["events"] = int(conn.execute(
            f'SELECT count(*) FROM "{schema}".crmsync_events WHERE originator_id = %s',
            (stream_id(tenant),)).fetchone()[0])  # type: ignore[index]
    return {t: n for t, n in out.items() if n}


@pytest.fixture
def two_shards(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[str, str, Path]]:
    """Shard `default` in the fixture's schema, shard `eu` in a second one; `beta` on eu."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    eu = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    path = tmp_path / "shards.json"
    path.write_text(json.dumps({"shards": {"default": postgres_url, "eu": eu},
                                "tenants": {"beta": "eu"}}))
    monkeypatch.setenv(shards.SHARD_MAP_ENV, str(path))
    monkeypatch.delenv("CRMSYNC_POSTGRES_URL", raising=False)
    try:
        yield postgres_url, eu, path
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _apply(tmp_path: Path, lines: list[dict[str, Any]]) -> int:
    source = tmp_path / "commands.jsonl"
    source.write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in lines))
    return main(["--db", str(tmp_path / "unused.db"), "apply", str(source)])


def _alone(tmp_path: Path, lines: list[dict[str, Any]], tenant: str) -> dict[str, Any]:
    """The answers one unsharded engine gives for the same commands."""
    engine = Engine.open_sqlite(str(tmp_path / f"alone-{tenant}.db"))
    try:
        engine.apply_lines([orjson.dumps(c) for c in lines])
        return answers(engine, tenant)
    finally:
        engine.close()


def test_shards_route_commands_and_queries_without_leak(
        two_shards: tuple[str, str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    default, eu, _ = two_shards
    acme, beta = history(3, 60, "acme"), history(4, 60, "beta")
    mixed = [c for pair in zip(acme, beta, strict=True) for c in pair]  # interleaved lines
    assert _apply(tmp_path, mixed) in (0, 1)  # histories hold some rejected commands
    out = capsys.readouterr()
    alone = Engine.open_sqlite(str(tmp_path / "alone.db"))
    alone_report = alone.apply_lines([orjson.dumps(c) for c in mixed])
    alone.close()
    assert out.out.strip() == alone_report.summary()  # same counts as one engine
    # line numbers of rejections are those of the whole input
    want = "".join(f"line {n}: {cmd}: {f}: {r}\n" for n, cmd, f, r in alone_report.rejected)
    assert [x for x in out.err.splitlines() if ": warning:" not in x] == want.splitlines()

    assert set(rows_of(default, "beta")) == set() and set(rows_of(eu, "acme")) == set()
    seqs = alone_report.tenant_positions  # each tenant's event count in one engine
    assert rows_of(default, "acme")["events"] == seqs["acme"] > 0
    assert rows_of(eu, "beta")["events"] == seqs["beta"] > 0
    for url, tenant, lines in ((default, "acme", acme), (eu, "beta", beta)):
        engine = open_engine("unused.db", url)
        try:
            assert answers(engine, tenant) == _alone(tmp_path, lines, tenant)
        finally:
            engine.close()

    # `crmsync query` goes to the tenant's shard
    assert main(["query", "records", "--tenant", "beta", "--viewer", "u0", "--json"]) == 0
    engine = open_engine("unused.db", eu)
    try:
        assert json.loads(capsys.readouterr().out) == engine.query_records("beta", "u0")
    finally:
        engine.close()
    # a runner needs --shard; an unknown shard is a usage error
    assert main(["lag"]) == 2
    assert main(["--shard", "mars", "lag"]) == 2
    assert main(["--shard", "eu", "lag", "--json"]) == 0


def test_shard_move_keeps_events_chain_and_answers(
        two_shards: tuple[str, str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    default, eu, path = two_shards
    acme = history(5, 80, "acme")
    _apply(tmp_path, acme + history(6, 20, "beta"))
    engine = open_engine("unused.db", default)
    try:
        before_answers = answers(engine, "acme")
        before_log = engine.verify_log("acme")
    finally:
        engine.close()
    before_rows = rows_of(default, "acme")
    beta_rows = rows_of(eu, "beta")
    capsys.readouterr()

    assert main(["shard", "move", "--tenant", "acme", "--to", "eu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] is True and report["events"] == before_rows["events"]
    assert json.loads(path.read_text())["tenants"] == {"acme": "eu", "beta": "eu"}

    assert rows_of(default, "acme") == {}  # nothing of acme left on the source
    moved_rows = rows_of(eu, "acme")
    assert moved_rows["events"] == before_rows["events"]
    assert {t: n for t, n in moved_rows.items() if t.startswith("view_")} == \
        {t: n for t, n in before_rows.items() if t.startswith("view_")}
    assert rows_of(eu, "beta") == beta_rows  # the target's own tenant untouched
    engine = open_engine("unused.db", eu)
    try:
        after_log = engine.verify_log("acme")
        assert after_log.failure is None and after_log.events == before_log.events
        assert after_log.heads == before_log.heads  # same chain head: events as stored
        assert answers(engine, "acme") == before_answers
    finally:
        engine.close()
    # commands now go to the new shard, and a second move to where it is is refused
    assert _apply(tmp_path, [{"cmd": "AddUser", "tenant": "acme", "user": "new",
                              "email": "new@acme.test", "role": "member"}]) == 0
    assert rows_of(eu, "acme")["events"] == before_rows["events"] + 1
    assert rows_of(default, "acme") == {}
    assert main(["shard", "move", "--tenant", "acme", "--to", "eu"]) == 2


def test_http_routes_by_the_tokens_tenant(two_shards: tuple[str, str, Path],
                                          tmp_path: Path) -> None:
    default, eu, _ = two_shards
    shard_map = shards.load()
    assert shard_map is not None
    engines = {"default": open_engine("unused.db", default), "eu": open_engine("unused.db", eu)}
    apps = {name: create_app(e, SECRET, max_wait=5.0) for name, e in engines.items()}
    router = shards.TenantRouter(apps, shard_map, SECRET)
    jsonl = {"content-type": "application/x-ndjson"}

    def who(tenant: str, user: str, service: bool = False) -> dict[str, str]:
        return {"authorization": f"Bearer {issue(SECRET, tenant, user, service)}"}

    try:
        with Server(router) as server, httpx.Client(base_url=server.url, timeout=30) as api:
            for tenant in ("acme", "beta"):
                lines = [{"cmd": "AddUser", "tenant": tenant, "user": "ada",
                          "email": f"ada@{tenant}.test", "role": "admin"},
                         {"cmd": "CreateLead", "tenant": tenant, "record": "lead-1",
                          "owner": "ada", "name": f"{tenant} lead", "emails": ["x@x.test"]}]
                answer = api.post("/v1/commands", headers={**who(tenant, "svc", True), **jsonl},
                                  content=b"".join(orjson.dumps(c) + b"\n" for c in lines))
                assert answer.status_code == 200 and answer.json()["applied"] == 2, answer.text
            for tenant in ("acme", "beta"):
                found = api.get("/v1/records", headers=who(tenant, "ada"),
                                params={"min_position": 2})
                assert found.status_code == 200, found.text
                assert [r["name"] for r in found.json()] == [f"{tenant} lead"], found.json()
            assert api.get("/v1/records", headers={"authorization": "Bearer nope"}
                           ).status_code == 401
        assert set(rows_of(default, "beta")) == set() and set(rows_of(eu, "acme")) == set()
        assert rows_of(default, "acme")["events"] == rows_of(eu, "beta")["events"] == 2
    finally:
        for engine in engines.values():
            engine.close()


def test_nats_subjects_per_shard_keep_deliveries_apart(nats_url: str) -> None:
    """Each shard's receiver publishes to its own stream and subjects, each shard's workers
    consume their own: a delivery reaches the workers of its shard only."""
    import asyncio
    import contextlib

    import nats

    from adapters.deliveries.inbox_jetstream import JetStreamInbox
    from adapters.deliveries.work_jetstream import JetStreamWork

    tag = uuid.uuid4().hex[:8]
    base = {"CRMSYNC_NATS_STREAM": f"T_SHARDS_{tag}",
            "CRMSYNC_NATS_SUBJECT_PREFIX": f"t.shards{tag}.hooks",
            "CRMSYNC_NATS_DURABLE": f"w-{tag}"}
    names = {s: shards.nats_names(s, base) for s in ("default", "eu")}

    async def story() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        parts = []
        for env in names.values():
            inbox = JetStreamInbox(nats_url, stream=env["CRMSYNC_NATS_STREAM"],
                                   subject_prefix=env["CRMSYNC_NATS_SUBJECT_PREFIX"])
            work = JetStreamWork(nats_url, stream=env["CRMSYNC_NATS_STREAM"],
                                 subject_prefix=env["CRMSYNC_NATS_SUBJECT_PREFIX"],
                                 durable=env["CRMSYNC_NATS_DURABLE"], ack_wait=30)
            parts.append((inbox, work))
            await work.fetch(1, 0.2)  # streams and consumers exist before the deliveries
        for (inbox, _), shard in zip(parts, names, strict=True):
            for n in range(3):
                assert await inbox.store("gmail", f"{shard}-{n}", b"{}")
        for (inbox, work), shard in zip(parts, names, strict=True):
            got[shard] = []
            while batch := await work.fetch(10, 1.0):
                for delivery in batch:
                    got[shard].append(delivery.delivery_id)
                    await work.ack(delivery)
            await inbox.close()
            await work.close()
        return got

    async def cleanup() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for env in names.values():
            for stream in (env["CRMSYNC_NATS_STREAM"], env["CRMSYNC_NATS_STREAM"] + "_DEAD"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
        await nc.close()

    try:
        got = asyncio.run(story())
    finally:
        asyncio.run(cleanup())
    assert {s: sorted(ids) for s, ids in got.items()} == {
        "default": ["default-0", "default-1", "default-2"], "eu": ["eu-0", "eu-1", "eu-2"]}


def test_shard_move_refuses_when_a_writer_was_not_stopped(
        two_shards: tuple[str, str, Path], tmp_path: Path) -> None:
    """A command reaching the source between the copy and the flip: nothing moves, the copy is
    deleted from the target, the map and the source stay as they were."""
    from adapters.errors import StoreError
    from runners.services.shard_move import move_tenant

    default, eu, path = two_shards
    _apply(tmp_path, history(7, 30, "acme"))
    before = rows_of(default, "acme")
    shard_map = shards.load()
    assert shard_map is not None

    def writer_slips_in(text: str) -> None:
        if text.startswith("verified"):
            engine = open_engine("unused.db", default)
            try:
                report = engine.apply_lines([orjson.dumps({
                    "cmd": "AddUser", "tenant": "acme", "user": "late",
                    "email": "late@acme.test", "role": "member"})])
                assert report.applied == 1
            finally:
                engine.close()

    with pytest.raises(StoreError, match="grew on shard 'default'"):
        move_tenant(shard_map, "acme", "eu", lambda url: open_engine("unused.db", url),
                    say=writer_slips_in)
    assert json.loads(path.read_text())["tenants"] == {"beta": "eu"}
    assert rows_of(eu, "acme") == {}
    after = rows_of(default, "acme")
    assert after["events"] == before["events"] + 1
    # the move goes through once the writers are stopped
    assert main(["shard", "move", "--tenant", "acme", "--to", "eu"]) == 0
    assert rows_of(eu, "acme")["events"] == before["events"] + 1 and rows_of(default, "acme") == {}
