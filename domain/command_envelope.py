"""What every command shares (SPEC §6): `cmd`, `tenant`, optional `at`, `actor` and
`command_id`, and the refusal of input that cannot be stored faithfully (E8, `domain.input_rules`).
The commands themselves are in `domain.mail_commands` and `domain.crm_commands`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domain.input_rules import refusal

__all__ = ["Command"]


class Command(BaseModel):
    # defer_build: a command's validator is built when first used, not at import, so a
    # `crmsync query` process (which validates no command) starts faster
    model_config = ConfigDict(frozen=True, extra="forbid",
                              defer_build=True, strict=True)
    cmd: str
    tenant: str = Field(min_length=1)
    at: datetime | None = None
    actor: str | None = None
    command_id: str | None = None

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _storable(self) -> Command:
        found = refusal(self)
        if found is not None:
            raise found  # a ValueError: pydantic keeps it (and its field) in the error's ctx
        return self
