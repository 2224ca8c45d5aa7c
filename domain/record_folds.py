"""The fold of the tenant's settings, users, records and visibility (pure; see `domain.state`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain import events as ev
from domain.tenant import Record, TenantState, User, ref


def _index_record(s: TenantState, rec: Record, add: bool) -> None:
    if rec.type == "deal":
        for c in rec.contacts:
            deals = s.deals_of_contact.setdefault(c, set())
            (deals.add if add else deals.discard)(rec.id)
        return
    for a in rec.emails:
        recs = s.address_records.setdefault(a, set())
        (recs.add if add else recs.discard)(rec.id)


def _lower(addresses: list[str]) -> list[str]:
    return sorted({a.lower() for a in addresses})


def _tenant_configured(s: TenantState, e: ev.TenantConfigured, seq: int) -> None:
    for key, given in e.settings.items():
        value = given
        if key == "allowed_attachment_types":
            value = tuple(v.lower().lstrip(".") for v in given)
        elif key == "bcc_address" and given is not None:
            value = given.lower()
        setattr(s.settings, key, value)


def _user_added(s: TenantState, e: ev.UserAdded, seq: int) -> None:
    s.users[e.user] = User(e.user, e.email.lower(), e.role, e.manager)
    s.user_addresses.add(e.email.lower())


def _manager_changed(s: TenantState, e: ev.UserManagerChanged, seq: int) -> None:
    s.users[e.user].manager = e.manager


def _status(status: str) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        s.users[e.user].status = status

    return fold


def _level_set(s: TenantState, e: ev.GlobalVisibilitySet, seq: int) -> None:
    s.users[e.user].levels[e.record_type] = (e.level, ref(e, seq))


def _lead_created(s: TenantState, e: ev.LeadCreated, seq: int) -> None:
    rec = Record(e.record, "lead", e.owner, e.name, _lower(e.emails), owner_ref=ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _contact_created(s: TenantState, e: ev.ContactCreated, seq: int) -> None:
    rec = Record(e.record, "contact", e.owner, e.name, _lower(e.emails), kind=e.kind,
                 customer_status=e.customer_status, owner_ref=ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _contact_updated(s: TenantState, e: ev.ContactUpdated, seq: int) -> None:
    rec = s.records[e.record]
    _index_record(s, rec, False)
    for key, value in e.fields.items():
        if key == "emails":
            rec.emails = _lower(value)
        elif key == "name":
            rec.name = value
        elif key == "customer_status":
            rec.customer_status = value
        else:
            rec.fields[key] = value
    _index_record(s, rec, True)


def _deal_created(s: TenantState, e: ev.DealCreated, seq: int) -> None:
    rec = Record(e.record, "deal", e.owner, e.name, contacts=list(dict.fromkeys(e.contacts)),
                 stage=e.stage, owner_ref=ref(e, seq))
    s.records[e.record] = rec
    _index_record(s, rec, True)


def _deal_stage(s: TenantState, e: ev.DealStageChanged, seq: int) -> None:
    s.records[e.record].stage = e.stage


def _deal_contact_linked(s: TenantState, e: ev.DealContactLinked, seq: int) -> None:
    s.records[e.deal].contacts.append(e.contact)
    s.deals_of_contact.setdefault(e.contact, set()).add(e.deal)


def _deal_contact_unlinked(s: TenantState, e: ev.DealContactUnlinked, seq: int) -> None:
    s.records[e.deal].contacts.remove(e.contact)
    s.deals_of_contact.get(e.contact, set()).discard(e.deal)


def _owner_changed(s: TenantState, e: ev.RecordOwnerChanged, seq: int) -> None:
    rec = s.records[e.record]
    rec.owner = e.owner
    rec.owner_ref = ref(e, seq)


def _collaborator(add: bool) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        collaborators = s.records[e.record].collaborators
        (collaborators.add if add else collaborators.discard)(e.user)

    return fold


def _thread_link(linked: bool) -> Callable[[TenantState, Any, int], None]:
    def fold(s: TenantState, e: Any, seq: int) -> None:
        thread = s.threads[e.thread]
        if thread.manual is None:
            thread.manual = {}
        thread.manual[e.record] = (linked, ref(e, seq))
        s.manual_threads.setdefault(e.record, set()).add(e.thread)

    return fold


def _address_setting(s: TenantState, e: ev.AddressSettingChanged, seq: int) -> None:
    s.records[e.record].settings[(e.user, e.address.lower())] = (e.setting, ref(e, seq))


def _thread_marked(s: TenantState, e: ev.ThreadMarked, seq: int) -> None:
    for t in e.threads:
        s.threads[t].flag = (e.shared, ref(e, seq))


def _tokens_revoked(s: TenantState, e: ev.TokensRevoked, seq: int) -> None:
    s.users[e.user].tokens_revoked_at = e.occurred_at


FOLDS: dict[type[ev.DomainEvent], Callable[[TenantState, Any, int], None]] = {
    ev.TenantConfigured: _tenant_configured,
    ev.UserAdded: _user_added,
    ev.UserManagerChanged: _manager_changed,
    ev.UserDeactivated: _status("deactivated"),
    ev.UserReactivated: _status("active"),
    ev.UserDeleted: _status("deleted"),
    ev.TokensRevoked: _tokens_revoked,
    ev.GlobalVisibilitySet: _level_set,
    ev.LeadCreated: _lead_created,
    ev.ContactCreated: _contact_created,
    ev.ContactUpdated: _contact_updated,
    ev.DealCreated: _deal_created,
    ev.DealStageChanged: _deal_stage,
    ev.DealContactLinked: _deal_contact_linked,
    ev.DealContactUnlinked: _deal_contact_unlinked,
    ev.RecordOwnerChanged: _owner_changed,
    ev.CollaboratorAdded: _collaborator(True),
    ev.CollaboratorRemoved: _collaborator(False),
    ev.ThreadLinked: _thread_link(True),
    ev.ThreadUnlinked: _thread_link(False),
    ev.AddressSettingChanged: _address_setting,
    ev.ThreadMarked: _thread_marked,
}
