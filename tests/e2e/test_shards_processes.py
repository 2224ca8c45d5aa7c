"""Shards as an operator runs them (issue #15): one `crmsync serve` over a shard map and one
projection runner per shard (`--shard NAME`), two shard schemas on the shared PostgreSQL; each
tenant's commands and queries over HTTP land on its shard and are projected by that shard's
runner only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from conftest import POSTGRES_URL
from processes import Processes, embedded_env, free_port, wait_until

from adapters.eventstore.store import stream_id

pytestmark = pytest.mark.e2e
SECRET = "e2e-shards-secret-" + "x" * 32


@pytest.fixture
def eu_schema() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def events_in(schema: str, tenant: str) -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".crmsync_events WHERE '
                           "originator_id = %s", (stream_id(tenant),)).fetchone()
    return int(row[0]) if row else 0


def test_serve_and_runners_per_shard_route_by_tenant(postgres_url: str, eu_schema: str,
                                                     tmp_path: Path) -> None:
    eu = f"{POSTGRES_URL}?options=-csearch_path%3D{eu_schema}"
    shard_map = tmp_path / "shards.json"
    shard_map.write_text(json.dumps({"shards": {"default": postgres_url, "eu": eu},
                                     "tenants": {"beta": "eu"}}))
    port = free_port()
    env = embedded_env(str(tmp_path / "unused.db"), CRMSYNC_SHARD_MAP=str(shard_map),
                       CRMSYNC_SECRET=SECRET, CRMSYNC_GMAIL_PUSH_AUTH="off")
    procs = Processes(tmp_path, str(tmp_path / "unused.db"), env)
    try:
        procs.start("serve", "serve", "--port", str(port))
        for shard in ("default", "eu"):
            procs.start(f"projections-{shard}", "--shard", shard, "run", "projections",
                        "--poll", "0.2")

        def token(tenant: str, user: str, *service: str) -> dict[str, str]:
            done = procs.cli("token", "--tenant", tenant, "--user", user, *service)
            assert done.returncode == 0, done.stderr
            return {"authorization": f"Bearer {done.stdout.strip()}"}

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            wait_until(lambda: _up(api), 60, "serve answers /healthz")
            for tenant in ("acme", "beta"):
                lines = [{"cmd": "AddUser", "tenant": tenant, "user": "ada",
                          "email": f"ada@{tenant}.test", "role": "admin"},
                         {"cmd": "CreateLead", "tenant": tenant, "record": "lead-1",
                          "owner": "ada", "name": f"{tenant} lead", "emails": ["x@x.test"]}]
                answer = api.post("/v1/commands", headers={
                    **token(tenant, "svc", "--service"),
                    "content-type": "application/x-ndjson"},
                    content=b"".join(orjson.dumps(c) + b"\n" for c in lines))
                assert answer.status_code == 200 and answer.json()["applied"] == 2, answer.text
            for tenant in ("acme", "beta"):  # min_position: wait for that shard's runner
                found = api.get("/v1/records", params={"min_position": 2},
                                headers=token(tenant, "ada"))
                assert found.status_code == 200, found.text
                assert [r["name"] for r in found.json()] == [f"{tenant} lead"]
        default_schema = postgres_url.rsplit("%3D", 1)[1]
        assert (events_in(default_schema, "acme"), events_in(default_schema, "beta")) == (2, 0)
        assert (events_in(eu_schema, "acme"), events_in(eu_schema, "beta")) == (0, 2)
        listed = procs.cli("shard", "list")
        assert listed.returncode == 0 and json.loads(listed.stdout)["tenants"] == {"beta": "eu"}
        lag = procs.cli("--shard", "eu", "lag", "--json")
        assert lag.returncode == 0, lag.stderr
        assert {v["position"] for v in json.loads(lag.stdout).values()} == {2}
    finally:
        procs.stop_all()


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
