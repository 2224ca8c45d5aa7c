"""Tenant-sharded event stores (issue #15, past one machine): which PostgreSQL database (or
schema) holds which tenant, and the routing of runners, commands, queries and HTTP requests.

The map comes from `$CRMSYNC_SHARD_MAP` (a JSON file) or `$CRMSYNC_SHARDS` (one line), never both:

    CRMSYNC_SHARDS='default=postgresql://h1/crm;eu=postgresql://h2/crm;acme:eu;globex:eu'
    {"shards": {"default": "postgresql://h1/crm", "eu": "postgresql://h2/crm"},
     "tenants": {"acme": "eu", "globex": "eu"}}

An entry `NAME=URL` names a shard (the first `=` ends the name; URLs may hold `=` and `:`), an
entry `TENANT:SHARD` assigns a tenant (split at the last `:`). A shard named `default` is
required: unlisted tenants live there. Each shard is a whole engine (events, views, content keys,
credentials) in its own database or schema; all shards share the deployment's secrets.

Without a map nothing changes: one engine at `--postgres` / `$CRMSYNC_POSTGRES_URL` / `--db`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runners.bootstrap.settings import PREFIX, Settings, load_settings

if TYPE_CHECKING:
    from runners.services.apply import ApplyReport
    from runners.services.engine import Engine

SHARDS_ENV, SHARD_MAP_ENV = "CRMSYNC_SHARDS", "CRMSYNC_SHARD_MAP"
DEFAULT = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # names NATS streams, subjects and consumers


class ShardMapError(ValueError):
    """The shard map is malformed; the message names the entry."""


@dataclass(frozen=True)
class ShardMap:
    shards: dict[str, str]  # name -> PostgreSQL URL
    tenants: dict[str, str] = field(default_factory=dict)  # tenant -> shard name (not default)
    path: str | None = None  # the JSON file it came from (`shard move` rewrites it)

    def __post_init__(self) -> None:
        for name in self.shards:
            if not _NAME.fullmatch(name):
                raise ShardMapError(f"shard name {name!r}: lowercase letters, digits, _ and -, "
                                    "at most 32")
        if DEFAULT not in self.shards:
            raise ShardMapError(f"no shard named {DEFAULT!r} (where unlisted tenants live)")
        seen: dict[tuple[str, ...], str] = {}
        for name, url in self.shards.items():
            where = _location(name, url)
            if where in seen:
                raise ShardMapError(f"shards {seen[where]!r} and {name!r} are the same database "
                                    "and schema")
            seen[where] = name
        for tenant, shard in self.tenants.items():
            if not tenant:
                raise ShardMapError("an empty tenant id")
            if shard not in self.shards:
                raise ShardMapError(f"tenant {tenant!r}: no shard named {shard!r}")

    def shard_of(self, tenant: str) -> str:
        return self.tenants.get(tenant, DEFAULT)

    def url_of(self, tenant: str) -> str:
        return self.shards[self.shard_of(tenant)]

    def url(self, shard: str) -> str:
        if shard not in self.shards:
            raise ShardMapError(f"no shard named {shard!r} (known: {', '.join(self.shards)})")
        return self.shards[shard]

    def moved(self, tenant: str, shard: str) -> ShardMap:
        tenants = dict(self.tenants)
        tenants.pop(tenant, None)
        if shard != DEFAULT:
            tenants[tenant] = shard
        return ShardMap(dict(self.shards), tenants, self.path)

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "tenants": dict(sorted(self.tenants.items()))}


def _location(name: str, url: str) -> tuple[str, ...]:
    """(host, port, dbname, schema) of a shard's URL: two shards may not share one."""
    from runners.bootstrap.config_postgres import location

    try:
        return location(url)
    except ValueError as exc:
        raise ShardMapError(f"shard {name!r}: not a PostgreSQL URL: {exc}") from None


def parse_line(text: str) -> ShardMap:
    """`$CRMSYNC_SHARDS`: `NAME=URL` and `TENANT:SHARD` entries separated by `;`."""
    shards: dict[str, str] = {}
    tenants: dict[str, str] = {}
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        eq, colon = entry.find("="), entry.find(":")
        if eq > 0 and (colon < 0 or eq < colon):
            name, url = entry[:eq].strip(), entry[eq + 1:].strip()
            if name in shards:
                raise ShardMapError(f"shard {name!r} named twice")
            shards[name] = url
        elif colon > 0:
            tenant, shard = entry.rsplit(":", 1)
            if tenant.strip() in tenants:
                raise ShardMapError(f"tenant {tenant.strip()!r} assigned twice")
            tenants[tenant.strip()] = shard.strip()
        else:
            raise ShardMapError(f"{entry!r}: neither NAME=URL nor TENANT:SHARD")
    return ShardMap(shards, {t: s for t, s in tenants.items() if s != DEFAULT})


def parse_json(doc: object, path: str | None = None) -> ShardMap:
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), dict):
        raise ShardMapError('a JSON object with "shards": {name: URL} (and "tenants")')
    shards, tenants = doc["shards"], doc.get("tenants", {})
    if not isinstance(tenants, dict):
        raise ShardMapError('"tenants" must be an object {tenant: shard}')
    unknown = set(doc) - {"shards", "tenants"}
    if unknown:
        raise ShardMapError(f"unknown keys {sorted(unknown)}")
    for key, value in (*shards.items(), *tenants.items()):
        if not isinstance(value, str):
            raise ShardMapError(f"{key!r}: a string, not {value!r}")
    return ShardMap(dict(shards), {t: s for t, s in tenants.items() if s != DEFAULT}, path)


def load(env: Settings | Mapping[str, str] | None = None) -> ShardMap | None:
    """The configured map (the given settings, or settings from `env`, default the process
    environment), None without one; ShardMapError when malformed or set twice."""
    settings = env if isinstance(env, Settings) else load_settings(env)
    line, path = (settings.SHARDS or "").strip(), (settings.SHARD_MAP or "").strip()
    if line and path:
        raise ShardMapError(f"set {SHARDS_ENV} or {SHARD_MAP_ENV}, not both")
    if path:
        try:
            with open(path, "rb") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ShardMapError(f"{SHARD_MAP_ENV}={path}: {exc}") from None
        return parse_json(doc, path)
    return parse_line(line) if line else None


def save(shard_map: ShardMap) -> None:
    """Rewrite the map file atomically (a reader sees the old or the new map, never half)."""
    assert shard_map.path is not None
    tmp = f"{shard_map.path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(shard_map.to_json(), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, shard_map.path)


# -- runners: one process per shard -------------------------------------------------------------
def nats_names(shard: str, env: Settings | Mapping[str, str] | None = None) -> dict[str, str]:
    """The shard's JetStream stream, subject prefix and consumer: the default shard keeps the
    configured names (settings from `env`, default the process environment; a one-shard
    deployment is unchanged), shard X appends `-X` / `_X`, so the streams' subjects never
    overlap (`crmsync.webhooks-eu.>` beside `crmsync.webhooks.>`)."""
    settings = env if isinstance(env, Settings) else load_settings(env)
    stream, prefix = settings.NATS_STREAM, settings.NATS_SUBJECT_PREFIX
    durable = settings.NATS_DURABLE
    if shard == DEFAULT:
        return {"CRMSYNC_NATS_STREAM": stream, "CRMSYNC_NATS_SUBJECT_PREFIX": prefix,
                "CRMSYNC_NATS_DURABLE": durable}
    return {"CRMSYNC_NATS_STREAM": f"{stream}_{shard.upper().replace('-', '_')}",
            "CRMSYNC_NATS_SUBJECT_PREFIX": f"{prefix}-{shard}",
            "CRMSYNC_NATS_DURABLE": f"{durable}-{shard}"}


def select(args: argparse.Namespace, shard_map: ShardMap | None) -> str | None:
    """Point a parsed command line at its shard; a usage error (returned) when it cannot.

    `--shard NAME` (any command): that shard's URL and NATS names. Without it, commands naming
    a tenant (query, export, import-mail, verify --log --tenant) go to the tenant's shard; the
    runners, rebuild, verify and lag need `--shard` (one process per shard)."""
    shard: str | None = getattr(args, "shard", None)
    if shard_map is None:
        return "--shard needs a shard map ($CRMSYNC_SHARD_MAP or $CRMSYNC_SHARDS)" if shard \
            else None
    if args.postgres:
        return "--postgres and a shard map: the map names the databases"
    tenant = getattr(args, "tenant", None)
    if args.command in ("apply", "serve", "shard"):
        # routed per line / per request / by the map itself: a --shard would bypass that
        return f"`{args.command}` routes by tenant: drop --shard" if shard else None
    if args.command in ("token", "demo"):
        return None  # no store
    if shard is not None and tenant is not None and shard_map.shard_of(tenant) != shard:
        return f"tenant {tenant!r} lives on shard {shard_map.shard_of(tenant)!r}, not {shard!r}"
    if shard is None:
        if tenant is None:
            return f"`{args.command}` with a shard map needs --shard NAME (one per shard)"
        shard = shard_map.shard_of(tenant)
    try:
        args.postgres = shard_map.url(shard)
    except ShardMapError as exc:
        return str(exc)
    # handed to the sync and webhook runners as settings: they and the receiver processes
    # `run webhooks` starts build theirs from the environment (a write, not a read)
    given: Settings | None = getattr(args, "settings", None)
    names = nats_names(shard, given)
    os.environ.update(names)
    if given is not None:  # the process's one Settings follows the write
        args.settings = given.model_copy(update={
            name.removeprefix(PREFIX): value for name, value in names.items()})
    return None


# -- commands: each line to its tenant's shard --------------------------------------------------
def line_tenant(line: str | bytes) -> str | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    tenant = raw.get("tenant") if isinstance(raw, dict) else None
    return tenant if isinstance(tenant, str) else None


def apply_routed(lines: Sequence[str | bytes], shard_map: ShardMap,
                 open_shard: Callable[[str], Engine]) -> ApplyReport:
    """Apply JSON Lines commands, each on the shard of its tenant (unreadable lines on the
    default shard, which rejects them as one engine would). A shard sees its own lines in their
    order with the others blanked, so line numbers stay those of the whole input; tenants are
    independent, so the order between shards does not matter."""
    from runners.services.apply import ApplyReport

    routed: dict[str, list[str | bytes]] = {}
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        tenant = line_tenant(line)
        shard = shard_map.shard_of(tenant) if tenant is not None else DEFAULT
        routed.setdefault(shard, [b""] * len(lines))[number] = line
    total = ApplyReport()
    for shard in sorted(routed):
        engine = open_shard(shard)
        try:
            part = engine.apply_lines(routed[shard])
        finally:
            engine.close()
        total.applied += part.applied
        total.unchanged += part.unchanged
        total.rejected += part.rejected
        total.warnings += part.warnings
        total.results += part.results
        total.tenant_positions.update(part.tenant_positions)
    total.rejected.sort()
    total.warnings.sort()
    total.results.sort()
    return total


# -- the HTTP API: each request to the engine of its token's tenant ----------------------------
class TenantRouter:
    """An ASGI app in front of one API app per shard: a request with a valid token (bearer
    header, or the admin pages' cookie) goes to its tenant's shard; anything else (no token, a
    bad one, webhooks, /healthz, /metrics, /openapi.json) to the default shard, which answers
    it as a lone server would (401 for a bad token). The shard app verifies the token again."""

    def __init__(self, apps: Mapping[str, Any], shard_map: ShardMap, secret: bytes,
                 token_max_age: int | None = None) -> None:
        self.apps, self.shard_map = dict(apps), shard_map
        self.secret, self.token_max_age = secret, token_max_age

    def shard_for(self, headers: Sequence[tuple[bytes, bytes]]) -> str:
        from adapters.http.tokens import InvalidToken, verify
        from adapters.http.ui import COOKIE

        token = None
        for key, value in headers:
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                token = value[7:].decode("latin-1").strip()
            elif key == b"cookie" and token is None:
                for part in value.decode("latin-1").split(";"):
                    name, _, found = part.strip().partition("=")
                    if name == COOKIE:
                        token = found
        if not token:
            return DEFAULT
        try:
            principal = verify(self.secret, token, max_age=self.token_max_age)
        except InvalidToken:
            return DEFAULT
        return self.shard_map.shard_of(principal.tenant)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # lifespan and websockets: the default app (it holds the webhook inbox to close)
        shard = self.shard_for(scope.get("headers", [])) if scope["type"] == "http" else DEFAULT
        await self.apps[shard](scope, receive, send)


def serve_sharded(shard_map: ShardMap, open_url: Callable[[str], Engine], host: str,
                  port: int) -> int:
    """`crmsync serve` with a shard map: one engine and API app per shard behind TenantRouter;
    the webhook routes, /healthz and /metrics on the default shard's app. Projection runners
    keep every shard's views (`crmsync run projections --shard NAME`)."""
    import uvicorn

    from adapters.http.api import create_app
    from adapters.http.webhooks import shared_client_state, webhook_router
    from runners.bootstrap.logs import configure_logging
    from runners.entrypoints import serve as single

    secret = single._secret()
    if secret is None:
        return single.EXIT_USAGE
    settings = load_settings()
    configure_logging(settings.LOG_LEVEL or "INFO", json=True)
    engines: dict[str, Engine] = {}
    try:
        for name in shard_map.shards:
            engines[name] = open_url(shard_map.url(name))
            engines[name].follow = False
        apps: dict[str, Any] = {}
        for name, engine in engines.items():
            apps[name] = create_app(engine, secret, token_max_age=single.max_token_age(),
                                    rate_limit=single.rate_limit(settings),
                                    stale_sync_seconds=settings.STALE_SYNC_SECONDS)
        apps[DEFAULT].include_router(webhook_router(
            single.webhook_inbox(None), shared_client_state(settings.secret(
                "GRAPH_CLIENT_STATE")), single.gmail_push_auth(True)))
        unregister = single.observe(apps[DEFAULT], engines[DEFAULT])
        router = TenantRouter(apps, shard_map, secret, single.max_token_age())
        import structlog

        structlog.get_logger("crmsync.serve").info("serving", host=host, port=port,
                                                   shards=sorted(engines))
        try:
            uvicorn.run(router, host=host, port=port, access_log=False, log_config=None,
                        log_level="warning")
        finally:
            unregister()
        return 0
    finally:
        for engine in engines.values():
            engine.close()
