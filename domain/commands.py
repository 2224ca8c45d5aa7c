"""The public command vocabulary of SPEC §6, parsed and validated with pydantic.

Every command is one JSON object with `cmd` and `tenant`, optional `at`, `actor` and `command_id`.
Unknown commands, unknown fields and wrong types are rejected here, before any rule runs, and
so is input that cannot be stored faithfully (E8: control characters, lone surrogates, absurd
sizes; `domain.input_rules`), named by its path (`message.subject`), however the command was
built (JSON, or a sync worker's provider message).
The commands are defined by area (`command_envelope`, `mail_commands`, `crm_commands`) and read
together here, as `c.<Command>`.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from domain import crm_commands, mail_commands
from domain.command_envelope import Command
from domain.crm_commands import *  # noqa: F403
from domain.errors import Rejection
from domain.events import Attachment, MailMessage
from domain.input_rules import InputRefused, safe_name
from domain.mail_commands import *  # noqa: F403

__all__ = ["COMMANDS", "Attachment", "Command", "MailMessage", "describe", "parse_command"]
__all__ += crm_commands.__all__
__all__ += mail_commands.__all__

COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls for cls in (*crm_commands.COMMANDS, *mail_commands.COMMANDS)}


def parse_command(raw: bytes | str | dict[str, Any]) -> Command:
    """Parse one command (a JSON text or an already-decoded object).

    Raises Rejection with the command name (or `?`), the offending field and a reason.
    """
    if isinstance(raw, dict):
        obj: Any = raw
        try:
            text = orjson.dumps(raw)
        except orjson.JSONEncodeError:  # a lone surrogate, a huge integer, a non-JSON value
            name = raw.get("cmd")
            shown = safe_name(name) if isinstance(name, str) else None
            raise Rejection(shown or "?", "(command)",
                            "not storable as JSON (lone surrogate or out-of-range value)"
                            ) from None
    else:
        text = raw.encode() if isinstance(raw, str) else raw
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise Rejection("?", "(line)", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejection("?", "(line)", "a command must be a JSON object")
    name = obj.get("cmd")
    if not isinstance(name, str):
        raise Rejection("?", "cmd", "missing or not a string")
    cls = COMMANDS.get(name)
    if cls is None:  # the caller's text is echoed only when it is short and clean (E8)
        raise Rejection(safe_name(name) or "?", "cmd", "unknown command")
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        field, reason = describe(exc)
        raise Rejection(name, field, reason) from None


def describe(exc: ValidationError) -> tuple[str, str]:
    """The first error of a command's validation as (field path, reason), never echoing input
    that cannot be stored (a dict key in a path is shown only when clean)."""
    err = exc.errors()[0]
    refused = (err.get("ctx") or {}).get("error")
    if isinstance(refused, InputRefused):
        return refused.field, refused.reason
    parts = [str(p) if isinstance(p, int) else safe_name(str(p)) or "?" for p in err["loc"]]
    return ".".join(parts) or "(command)", err["msg"]
