"""User lifecycle decisions (SPEC §3: L1, L2 without crypto-shredding, L3's status part, L6)."""

from __future__ import annotations

from domain import commands as c
from domain import events as ev
from domain.context import Context


def add_user(ctx: Context, cmd: c.AddUser) -> list[ev.DomainEvent]:
    s = ctx.state
    if cmd.user.startswith("system:"):
        # the actor of a service is `system:<name>` (E2); a user by that id would share its
        # command ids (E5) and pass for it in the audit trail
        raise ctx.reject("user", "ids starting with 'system:' are reserved for services")
    if cmd.user in s.users:
        raise ctx.reject("user", f"user {cmd.user!r} already exists")
    email = cmd.email.lower()
    for other in s.users.values():
        if other.email == email:
            raise ctx.reject("email", f"{email} is already the address of user {other.id!r}")
    if cmd.manager is not None:
        ctx.user(cmd.manager, "manager")
    return [ctx.event(ev.UserAdded, user=cmd.user, email=email, role=cmd.role,
                      manager=cmd.manager)]


def change_manager(ctx: Context, cmd: c.ChangeUserManager) -> list[ev.DomainEvent]:
    ctx.user(cmd.user)
    if cmd.manager is not None:
        ctx.user(cmd.manager, "manager")
        current: str | None = cmd.manager
        seen: set[str] = set()
        while current is not None and current not in seen:
            if current == cmd.user:
                raise ctx.reject("manager", "would make a management cycle")
            seen.add(current)
            current = ctx.state.users[current].manager
    return [ctx.event(ev.UserManagerChanged, user=cmd.user, manager=cmd.manager)]


def deactivate(ctx: Context, cmd: c.DeactivateUser) -> list[ev.DomainEvent]:
    user = ctx.user(cmd.user)
    if user.status != "active":
        raise ctx.reject("user", f"user {cmd.user!r} is {user.status}, not active")
    return [ctx.event(ev.UserDeactivated, user=cmd.user)]


def reactivate(ctx: Context, cmd: c.ReactivateUser) -> list[ev.DomainEvent]:
    user = ctx.state.users.get(cmd.user)
    if user is None:
        raise ctx.reject("user", f"unknown user {cmd.user!r}")
    if user.status == "deleted":
        raise ctx.reject("user", f"user {cmd.user!r} is deleted; deletion is permanent")
    if user.status != "deactivated":
        raise ctx.reject("user", f"user {cmd.user!r} is not deactivated")
    # L4 (Sell 000 warns): a mailbox the provider reported gone stays gone and keeps its history
    warnings = [f"mailbox {m.id!r} ({m.address}) is gone at the provider: it will not sync; "
                "its history is kept"
                for m in sorted(ctx.state.mailboxes.values(), key=lambda m: m.id)
                if m.user == cmd.user and m.status == "gone"]
    return [ctx.event(ev.UserReactivated, user=cmd.user, warnings=warnings)]


def delete(ctx: Context, cmd: c.DeleteUser) -> list[ev.DomainEvent]:
    """L2: records pass to `reassign_to`; credentials are erased; every thread leaves every view."""
    s = ctx.state
    ctx.user(cmd.user)
    owned = sorted(r.id for r in s.records.values() if r.owner == cmd.user)
    out: list[ev.DomainEvent] = []
    if cmd.reassign_to is not None:
        if cmd.reassign_to == cmd.user:
            raise ctx.reject("reassign_to", "cannot reassign records to the user being deleted")
        ctx.user(cmd.reassign_to, "reassign_to", active=True)
    if owned:
        if cmd.reassign_to is None:
            shown = ", ".join(owned[:5]) + (", …" if len(owned) > 5 else "")
            raise ctx.reject("reassign_to", f"user {cmd.user!r} still owns {len(owned)} "
                             f"record(s) ({shown}); name an active user to take them over")
        out += [ctx.event(ev.RecordOwnerChanged, record=r, owner=cmd.reassign_to,
                          previous_owner=cmd.user) for r in owned]
    out += [ctx.event(ev.CredentialsRemoved, mailbox=m.id)
            for m in sorted(s.mailboxes.values(), key=lambda m: m.id)
            if m.user == cmd.user and m.credentials_set]
    out.append(ctx.event(ev.UserDeleted, user=cmd.user, reassigned_to=cmd.reassign_to))
    out.append(ctx.event(ev.UserContentErased, user=cmd.user))  # crypto-shredding (L2)
    return out


def revoke_tokens(ctx: Context, cmd: c.RevokeTokens) -> list[ev.DomainEvent]:
    """§8: the user's tokens issued up to now are refused. A deleted user's are refused anyway."""
    ctx.user(cmd.user)
    return [ctx.event(ev.TokensRevoked, user=cmd.user)]


def configure_tenant(ctx: Context, cmd: c.ConfigureTenant) -> list[ev.DomainEvent]:
    settings = cmd.model_dump(exclude_none=True, exclude={"cmd", "tenant", "at", "actor",
                                                          "command_id"})
    return [ctx.event(ev.TenantConfigured, settings=settings)]


def set_global_visibility(ctx: Context, cmd: c.SetGlobalVisibility) -> list[ev.DomainEvent]:
    ctx.user(cmd.user)
    return [ctx.event(ev.GlobalVisibilitySet, user=cmd.user, record_type=cmd.record_type,
                      level=cmd.level)]
