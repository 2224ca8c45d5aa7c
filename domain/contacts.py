"""Contact sync and merge (SPEC §5): the decisions about CRM contacts and users' external
address books.

The contact-sync runner executes `ExternalContactChangeQueued` changes against the provider and
answers each with AcknowledgeExternalContactChange, recorded here as
`ExternalContactChangeAcknowledged`.
"""

from __future__ import annotations

from domain import commands as c
from domain import events as ev
from domain.context import Context


def acknowledge_change(ctx: Context, cmd: c.AcknowledgeExternalContactChange
                       ) -> list[ev.DomainEvent]:
    ctx.user(cmd.user)
    if not cmd.ok and not cmd.error:
        raise ctx.reject("error", "a refused change needs the provider's reason")
    return [ctx.event(ev.ExternalContactChangeAcknowledged, change_id=cmd.change_id,
                      user=cmd.user, external_id=cmd.external_id, ok=cmd.ok, error=cmd.error)]
