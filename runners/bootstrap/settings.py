"""Every `CRMSYNC_*` variable in one place: typed, defaulted, documented (issue #12).

The composition root builds one `Settings` from the environment when a command starts
(`load_settings`); runners read fields from it and pass values to adapters. It is built at
call time, not at import, so a variable set before the call (a test's monkeypatch, `run
webhooks` handing its `--db` to its receiver processes) still applies. An empty variable counts
as unset, as `os.environ.get(...) or default` did. Secrets are `SecretStr`: `crmsync config`
prints them as `***`.

Nothing else reads a CRMSYNC_* variable from the environment (tests/unit/test_settings.py
checks it): entrypoints and the bootstrap pass values on, adapters take them as arguments (the
content master key, for instance, as the event store's `CONTENT_KEY` entry and the views'
`content_key`). Writes stay where a value must reach a process started without arguments:
`run webhooks` hands `--db` to uvicorn's receiver processes, `--shard` its NATS names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

import orjson
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "CRMSYNC_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore",
                                      case_sensitive=True)

    # -- stores ---------------------------------------------------------------------------------
    DB: str = Field("./crmsync.db", description="the SQLite file of the embedded engine "
                    "(default of every command's --db)")
    POSTGRES_URL: SecretStr | None = Field(None, description="PostgreSQL URL (libpq URL or "
                                           "conninfo); set: events and views live there, not "
                                           "in the SQLite file (--postgres wins)")
    CREDENTIALS_KEY: SecretStr | None = Field(None, description="base64 of 32 bytes: encrypts "
                                              "stored mailbox credentials (SQLite: else a key "
                                              "file beside the db; PostgreSQL: required)")
    CONTENT_KEY: SecretStr | None = Field(None, description="base64 of 32 bytes: the master "
                                          "key of per-person content keys, L2 (SQLite: else a "
                                          "key file beside the db; PostgreSQL: required)")
    SNAPSHOTS: str = Field("on", description="off/0/false/no: no tenant snapshots")
    SNAPSHOT_KEY: SecretStr | None = Field(None, description="signs tenant snapshots (at "
                                           "least 16 bytes; else CRMSYNC_SECRET)")
    SNAPSHOT_EVERY: int = Field(10_000, description="events between two tenant snapshots")
    LAZY_MAILBOXES: str = Field("on", description="off/0/false/no: commands fold every "
                                "mailbox's mail at a tenant's first load, not when they first "
                                "touch it (PostgreSQL; issue #15)")
    RUNNER_SNAPSHOTS: str = Field("", description="on/1/true/yes: `run projections` keeps "
                                  "projection-runner snapshots")
    REBUILD_PARTS: str | None = Field(None, description="processes of `rebuild` when --parts is "
                                      "not given (unset: the CPUs, 1 to 4)")
    # -- HTTP API and webhook receiver -----------------------------------------------------------
    SECRET: SecretStr | None = Field(None, description="signs API tokens (at least 32 bytes); "
                                     "also the snapshot key when CRMSYNC_SNAPSHOT_KEY is unset")
    TOKEN_MAX_AGE: str | None = Field(None, description="longest accepted token lifetime, in "
                                      "seconds")
    COMMAND_RATE: float = Field(20, description="commands/s per principal (0: no limit)")
    COMMAND_BURST: float = Field(1000, description="command burst per principal")
    WEBHOOK_INBOX: str | None = Field(None, description="the SQLite webhook inbox (default: "
                                      "<db>.webhooks.db)")
    # operations (issue #14): passed where the endpoints start (runners/entrypoints/health.py,
    # serve's create_app for the admin problems)
    METRICS_PORT: int | None = Field(None, description="runners: serve /metrics, /healthz and "
                                     "/readyz on this port (unset or 0: off)")
    METRICS_HOST: str = Field("127.0.0.1", description="the address of the runners' metrics port")
    READY_MAX_LAG: int = Field(1000, description="/readyz: most events a projection may lag "
                               "(PostgreSQL)")
    READY_TIMEOUT: float = Field(5.0, description="/readyz: seconds the store has to answer")
    SHARDS: str | None = Field(None, description="tenant shards in one line: "
                               "`default=URL;eu=URL2;tenant:eu` (docs/scaling.md)")
    SHARD_MAP: str | None = Field(None, description="a JSON shard map file (instead of SHARDS)")
    STALE_SYNC_SECONDS: int = Field(86400, description="problems: a mailbox with no successful "
                                    "sync for this long is stale")
    WEBHOOK_ENGINE_DB: str | None = Field(None, description="internal: `run webhooks --db`, "
                                          "handed to the receiver processes")
    GMAIL_PUSH_AUTH: str = Field("on", description="off: accept Gmail pushes without checking "
                                 "their OIDC token")
    GMAIL_PUSH_AUDIENCE: str = Field("", description="the push subscription's OIDC audience")
    GMAIL_PUSH_SERVICE_ACCOUNT: str | None = Field(None, description="the service account the "
                                                   "push tokens must name")
    GOOGLE_CERTS_URL: str = Field("https://www.googleapis.com/oauth2/v1/certs",
                                  description="Google's OIDC certificates")
    GRAPH_CLIENT_STATE: SecretStr | None = Field(None, description="the clientState Graph "
                                                 "subscriptions carry (shared secret)")
    # -- NATS JetStream ------------------------------------------------------------------------
    NATS_URL: str | None = Field(None, description="set: webhooks go through JetStream, not "
                                 "the SQLite inbox")
    NATS_STREAM: str = Field("CRMSYNC_WEBHOOKS", description="the JetStream stream")
    NATS_SUBJECT_PREFIX: str = Field("crmsync.webhooks", description="the stream's subjects")
    NATS_DURABLE: str = Field("crmsync-sync", description="the sync workers' durable consumer")
    NATS_ACK_WAIT: float = Field(120, description="seconds before an unacked delivery is "
                                 "redelivered")
    NATS_PARTITIONS: int = Field(16, ge=0, description="tenant partitions of the sync workers' "
                                 "deliveries (issue #15; with PostgreSQL; 0: off). Change it "
                                 "only with the <stream>_PART stream empty")
    # -- providers and sync --------------------------------------------------------------------
    GMAIL_API_URL: str = Field("https://gmail.googleapis.com", description="Gmail API base URL")
    GRAPH_API_URL: str = Field("https://graph.microsoft.com/v1.0",
                               description="Microsoft Graph base URL")
    GRAPH_CA_FILE: str | None = Field(None, description="CA bundle for the Graph URL")
    GOOGLE_TOKEN_URL: str | None = Field(None, description="Google OAuth token endpoint "
                                         "(default Google's)")
    GOOGLE_CLIENT_ID: str | None = Field(None, description="Google OAuth client id (unset: no "
                                         "token refresh for Gmail)")
    GOOGLE_CLIENT_SECRET: SecretStr | None = Field(None, description="Google OAuth client "
                                                   "secret")
    MICROSOFT_TOKEN_URL: str | None = Field(None, description="Microsoft OAuth token endpoint "
                                            "(default the common tenant's)")
    MICROSOFT_CLIENT_ID: str | None = Field(None, description="Microsoft OAuth client id "
                                            "(unset: no token refresh for Outlook)")
    MICROSOFT_CLIENT_SECRET: SecretStr | None = Field(None, description="Microsoft OAuth client "
                                                      "secret")
    MICROSOFT_TOKEN_SCOPE: str | None = Field(None, description="scope of Microsoft token "
                                              "refreshes")
    PUBLIC_URL: str | None = Field(None, description="the receiver's public base URL (Graph "
                                   "subscriptions)")
    GMAIL_TOPIC: str | None = Field(None, description="Pub/Sub topic of Gmail watches")
    IMAP_POLL_SECONDS: float = Field(60, description="seconds between IMAP polls")
    PUSH_INTERVAL: float = Field(300, description="seconds between push-subscription checks")
    SMTP_PORT: int = Field(587, description="SMTP submission port of IMAP mailboxes")
    IMAP_SENT: str = Field("Sent", description="IMAP folder sent mail is appended to")
    # -- logging -------------------------------------------------------------------------------
    LOG_LEVEL: str | None = Field(None, description="log level (unset: INFO for runners, "
                                  "WARNING for the CLI)")

    def secret(self, name: str) -> str | None:
        """The plain value of a secret field (None when unset)."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def effective(self) -> list[dict[str, Any]]:
        """Every setting with its value (secrets `***`) and its source: env or default."""
        out = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            shown = "***" if isinstance(value, SecretStr) else value
            out.append({"name": PREFIX + name, "value": shown,
                        "source": "env" if name in self.model_fields_set else "default",
                        "description": field.description or ""})
        return out


def switched(value: str, default: bool) -> bool:
    """A switch setting: on/1/true/yes or off/0/false/no (any case); anything else, `default`."""
    word = value.strip().lower()
    if word in ("on", "1", "true", "yes"):
        return True
    if word in ("off", "0", "false", "no"):
        return False
    return default


class SettingsError(ValueError):
    """A variable that does not parse, named as it is set: `CRMSYNC_SMTP_PORT: ...`."""


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings in effect: from `env` (default: the process environment, read now)."""
    try:
        if env is None:
            return Settings()
        values: dict[str, Any] = {name: env[PREFIX + name] for name in Settings.model_fields
                                  if env.get(PREFIX + name)}
        return _FromMapping(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(
            f"{PREFIX}{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors())) from None


class _FromMapping(Settings):
    """Settings from a given mapping only (a test's or a caller's environment dict)."""

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def print_settings(settings: Settings, out: TextIO, *, as_json: bool = False) -> int:
    """`crmsync config`: one line per setting (name=value, source), or a JSON list."""
    rows = settings.effective()
    if as_json:
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for row in rows:
        value = "" if row["value"] is None else row["value"]
        out.write(f"{row['name']}={value}  # {row['source']}: {row['description']}\n")
    return 0
