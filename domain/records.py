"""Record decisions (leads, contacts, deals, owners, collaborators) and address sharing
(V2, V4-V6)."""

from __future__ import annotations

import re
from typing import Any

from domain import commands as c
from domain import events as ev
from domain.context import Context
from domain.state import Record
from domain.visibility import access, effective_address_setting

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _emails(ctx: Context, emails: Any, field: str = "emails") -> list[str]:
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        raise ctx.reject(field, "must be a list of email addresses")
    for i, e in enumerate(emails):
        if not _EMAIL.match(e):
            raise ctx.reject(f"{field}.{i}", f"{e!r} is not an email address")
    return sorted({e.lower() for e in emails})


def _new_record(ctx: Context, record: str, owner: str) -> None:
    if record in ctx.state.records:
        raise ctx.reject("record", f"record {record!r} already exists")
    ctx.user(owner, "owner", active=True)


def create_lead(ctx: Context, cmd: c.CreateLead) -> list[ev.DomainEvent]:
    _new_record(ctx, cmd.record, cmd.owner)
    return [ctx.event(ev.LeadCreated, record=cmd.record, owner=cmd.owner, name=cmd.name,
                      emails=_emails(ctx, cmd.emails))]


def create_contact(ctx: Context, cmd: c.CreateContact) -> list[ev.DomainEvent]:
    _new_record(ctx, cmd.record, cmd.owner)
    return [ctx.event(ev.ContactCreated, record=cmd.record, owner=cmd.owner, name=cmd.name,
                      kind=cmd.kind, emails=_emails(ctx, cmd.emails),
                      customer_status=cmd.customer_status or "none")]


def update_contact(ctx: Context, cmd: c.UpdateContact) -> list[ev.DomainEvent]:
    ctx.record(cmd.record, type_="contact")
    fields = dict(cmd.fields)
    if "emails" in fields:
        fields["emails"] = _emails(ctx, fields["emails"], "fields.emails")
    if "name" in fields and not isinstance(fields["name"], str):
        raise ctx.reject("fields.name", "must be a string")
    if "customer_status" in fields and fields["customer_status"] not in ("none", "current", "past"):
        raise ctx.reject("fields.customer_status", "must be one of none, current, past")
    return [ctx.event(ev.ContactUpdated, record=cmd.record, fields=fields)]


def _deal_contact(ctx: Context, contact: str, field: str) -> Record:
    """A contact a deal may be linked to: not one merged away (C9). The rejection names the
    survivor to link instead, unless the caller may not access it (V12)."""
    record = ctx.record(contact, field, type_="contact")
    cs = ctx.state.contacts
    if contact in cs.merged_into:
        survivor = ctx.state.records[cs.root(contact)]
        if ctx.actor.startswith("system:") or ctx.actor in access(ctx.state, survivor):
            raise ctx.reject(field, f"contact {contact!r} is merged into {survivor.id!r}; "
                                    "link that one")
        raise ctx.reject(field, f"contact {contact!r} is merged into another contact")
    return record


def create_deal(ctx: Context, cmd: c.CreateDeal) -> list[ev.DomainEvent]:
    _new_record(ctx, cmd.record, cmd.owner)
    for i, contact in enumerate(cmd.contacts):
        _deal_contact(ctx, contact, f"contacts.{i}")
    return [ctx.event(ev.DealCreated, record=cmd.record, owner=cmd.owner, name=cmd.name,
                      contacts=list(dict.fromkeys(cmd.contacts)), stage=cmd.stage)]


def change_stage(ctx: Context, cmd: c.ChangeDealStage) -> list[ev.DomainEvent]:
    deal = ctx.record(cmd.record, type_="deal")
    if deal.stage == cmd.stage:
        return []
    return [ctx.event(ev.DealStageChanged, record=cmd.record, stage=cmd.stage)]


def link_deal_contact(ctx: Context, cmd: c.LinkDealContact) -> list[ev.DomainEvent]:
    deal = ctx.record(cmd.deal, "deal", type_="deal")
    if cmd.contact in deal.contacts:  # linked before the merge: nothing changes
        ctx.record(cmd.contact, "contact", type_="contact")
        return []
    _deal_contact(ctx, cmd.contact, "contact")
    return [ctx.event(ev.DealContactLinked, deal=cmd.deal, contact=cmd.contact)]


def unlink_deal_contact(ctx: Context, cmd: c.UnlinkDealContact) -> list[ev.DomainEvent]:
    deal = ctx.record(cmd.deal, "deal", type_="deal")
    ctx.record(cmd.contact, "contact", type_="contact")
    if cmd.contact not in deal.contacts:
        raise ctx.reject("contact", f"contact {cmd.contact!r} is not linked to deal {cmd.deal!r}")
    return [ctx.event(ev.DealContactUnlinked, deal=cmd.deal, contact=cmd.contact)]


def change_owner(ctx: Context, cmd: c.ChangeOwner) -> list[ev.DomainEvent]:
    """V7: visibility is re-evaluated against the new owner (the projections do it)."""
    record = ctx.record(cmd.record)
    ctx.user(cmd.owner, "owner", active=True)
    if record.owner == cmd.owner:
        return []
    return [ctx.event(ev.RecordOwnerChanged, record=cmd.record, owner=cmd.owner,
                      previous_owner=record.owner)]


def add_collaborator(ctx: Context, cmd: c.AddCollaborator) -> list[ev.DomainEvent]:
    record = ctx.record(cmd.record)
    ctx.user(cmd.user, active=True)
    if cmd.user in record.collaborators:
        return []
    return [ctx.event(ev.CollaboratorAdded, record=cmd.record, user=cmd.user)]


def remove_collaborator(ctx: Context, cmd: c.RemoveCollaborator) -> list[ev.DomainEvent]:
    record = ctx.record(cmd.record)
    if cmd.user not in record.collaborators:
        raise ctx.reject("user", f"{cmd.user!r} is not a collaborator on {cmd.record!r}")
    return [ctx.event(ev.CollaboratorRemoved, record=cmd.record, user=cmd.user)]


def _share_target(ctx: Context, user: str, record_id: str, address: str) -> tuple[Record, str]:
    ctx.user(user)
    record = ctx.record(record_id)
    address = address.lower()
    if address not in ctx.state.record_addresses(record):
        raise ctx.reject("address", f"{address} is not an address of record {record_id!r}")
    return record, address


def _setting(ctx: Context, user: str, record: str, address: str, setting: str, cause: str
             ) -> ev.AddressSettingChanged:
    return ctx.event(ev.AddressSettingChanged, user=user, record=record, address=address,
                     setting=setting, cause=cause)


def share_address(ctx: Context, cmd: c.ShareAddress) -> list[ev.DomainEvent]:
    """V2/V4; V5: on a contact it shares on every linked deal now (overriding a deal's own
    setting) and in the future (deals without a setting inherit)."""
    record, address = _share_target(ctx, cmd.user, cmd.record, cmd.address)
    out: list[ev.DomainEvent] = [_setting(ctx, cmd.user, record.id, address, "shared", "share")]
    if record.type == "contact":
        for deal_id in sorted(ctx.state.deals_of_contact.get(record.id, ())):
            own = ctx.state.records[deal_id].settings.get((cmd.user, address))
            if own is not None and own[0] != "shared":
                out.append(_setting(ctx, cmd.user, deal_id, address, "shared", "cascade"))
    return out


def unshare_address(ctx: Context, cmd: c.UnshareAddress) -> list[ev.DomainEvent]:
    """V6: cascade on a contact unshares on its deals; without cascade each deal keeps exactly the
    effective setting it had (pinned). On a deal, cascade also unshares on its contacts."""
    s = ctx.state
    record, address = _share_target(ctx, cmd.user, cmd.record, cmd.address)
    out: list[ev.DomainEvent] = []
    if record.type == "contact":
        for deal_id in sorted(s.deals_of_contact.get(record.id, ())):
            deal = s.records[deal_id]
            if cmd.cascade:
                out.append(_setting(ctx, cmd.user, deal_id, address, "unshared", "cascade"))
            elif (cmd.user, address) not in deal.settings:
                before = effective_address_setting(s, cmd.user, deal, address)
                out.append(_setting(ctx, cmd.user, deal_id, address, before, "pin"))
    elif record.type == "deal" and cmd.cascade:
        for contact_id in record.contacts:
            if address in s.records[contact_id].emails:
                out.append(_setting(ctx, cmd.user, contact_id, address, "unshared", "cascade"))
    out.insert(0, _setting(ctx, cmd.user, record.id, address, "unshared", "unshare"))
    return out
