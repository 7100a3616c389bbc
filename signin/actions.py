"""State changes of Microsoft sign-in, as named functions (the only writers of its rows).

Settings and rules change by an admin (audited as setting changes); a
sign-in creates the account and membership on first use, applies the role
rules and adds the person's proxy addresses as aliases (each change in the
audit log, by the system, naming the rule); a refused sign-in is audited too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from tenants import access as tenant_access
from tenants.actions import ActionRefused, add_directory_alias, create_user
from tenants.audit import record_event, record_system_event
from tenants.models import AuditEvent, Membership, Role, Tenant, User

from . import access
from .entra import DirectoryUser, SignedIn, SigninRefused, usable_connection
from .models import EntraIdentity, EntraSignin, RoleRule, RuleAttribute
from .rules import RULE_ROLES, Attributes, role_for

log = logging.getLogger(__name__)
Action = AuditEvent.Action
ALIAS_SOURCE = "microsoft entra sign-in"
RULE_SOURCE = "microsoft entra role rule"
SETTING = "signin.microsoft"


# --- settings and rules (admins) ---------------------------------------------------------


def set_signin(actor: Membership, *, enabled: bool, default_role: str, ip: str | None = None) -> EntraSignin:
    """Turn "Sign in with Microsoft" on or off, and set the role when no rule matches; audited.

    Turning it on needs a usable connection (IDs and a certificate): else ActionRefused.
    """
    if default_role not in RULE_ROLES:
        raise ActionRefused(f"{default_role!r} cannot be the default role (admin, auditor or user).")
    if enabled:
        try:
            usable_connection(actor.tenant)
        except SigninRefused:
            raise ActionRefused(
                "Set up the Microsoft 365 connection first: its directory (tenant) ID, application (client) ID "
                "and a certificate uploaded to the app."
            ) from None
    with transaction.atomic():
        config = EntraSignin.objects.select_for_update().get(pk=access.signin_settings(actor.tenant).pk)
        old = {"enabled": config.enabled, "default_role": config.default_role}
        config.enabled, config.default_role = enabled, default_role
        new = {"enabled": enabled, "default_role": default_role}
        if new != old:
            config.save(update_fields=["enabled", "default_role", "updated_at"])
            changed = {k: {"old": old[k], "new": new[k]} for k in new if new[k] != old[k]}
            record_event(actor, Action.SETTING_CHANGED, {"changed": changed}, ip=ip, target=SETTING)
    return config


def add_rule(actor: Membership, attribute: str, value: str, role: str, ip: str | None = None) -> RoleRule:
    """A rule at the end of the list; audited."""
    value = " ".join(value.split())
    if attribute not in RuleAttribute.values:
        raise ActionRefused(f"{attribute!r} is not an attribute rules can use (memberOf, department, jobTitle).")
    if not value:
        raise ActionRefused("Enter the value the attribute must have.")
    if len(value) > 256:
        raise ActionRefused("The value is longer than 256 characters.")
    if role not in RULE_ROLES:
        raise ActionRefused(f"A rule gives admin, auditor or user, not {role!r}.")
    with transaction.atomic():
        # Rules of a tenant change one at a time: positions stay distinct.
        EntraSignin.objects.select_for_update().get(pk=access.signin_settings(actor.tenant).pk)
        last = access.rules(actor.tenant).aggregate(last=Max("position"))["last"]
        rule = RoleRule.objects.create(
            tenant=actor.tenant, position=(last or 0) + 1, attribute=attribute, value=value, role=role
        )
        record_event(actor, Action.SETTING_CHANGED, {"rule_added": str(rule)}, ip=ip, target=f"{SETTING}.rules")
    return rule


def remove_rule(actor: Membership, rule: RoleRule, ip: str | None = None) -> None:
    with transaction.atomic():
        if RoleRule.objects.filter(pk=rule.pk, tenant=actor.tenant).delete()[0]:
            record_event(actor, Action.SETTING_CHANGED, {"rule_removed": str(rule)}, ip=ip, target=f"{SETTING}.rules")


def move_rule(actor: Membership, rule: RoleRule, up: bool, ip: str | None = None) -> None:
    """Swap the rule with the one before (up) or after it; audited with the new order."""
    with transaction.atomic():
        ordered = list(access.rules(actor.tenant).select_for_update())
        index = next((i for i, r in enumerate(ordered) if r.pk == rule.pk), None)
        other = None if index is None else (index - 1 if up else index + 1)
        if index is None or other is None or not 0 <= other < len(ordered):
            return
        ordered[index], ordered[other] = ordered[other], ordered[index]
        for position, each in enumerate(ordered, start=1):
            if each.position != position:
                each.position = position
                each.save(update_fields=["position"])
        record_event(
            actor, Action.SETTING_CHANGED, {"rules": [str(r) for r in ordered]}, ip=ip, target=f"{SETTING}.rules"
        )


# --- a sign-in ----------------------------------------------------------------------------


def refuse(tenant: Tenant, refusal: SigninRefused, *, email: str = "", ip: str | None = None) -> None:
    """Record a refused sign-in in the tenant's audit log (the system's entry: nobody is signed in)."""
    detail: dict[str, Any] = {"reason": refusal.reason, **refusal.detail}
    if ip:
        detail["ip"] = ip
    record_system_event(tenant.pk, Action.SIGNIN_REFUSED, detail, target=email or "(unknown)")
    log.info("microsoft sign-in to tenant %s refused: %s", tenant.pk, refusal.reason)


@dataclass
class Outcome:
    user: User
    membership: Membership
    created: bool
    role_changed: bool
    aliases_added: list[str]


def check_address(tenant: Tenant, who: SignedIn) -> None:
    """The signed-in address must be in one of the tenant's verified domains; SigninRefused otherwise."""
    if "@" not in who.email:
        raise SigninRefused("no_address", "Microsoft did not tell us your address.")
    if access.domain_of(who.email) not in access.verified_domain_names(tenant):
        raise SigninRefused(
            "domain_not_verified",
            f"{who.email} is not in one of your organization's verified domains.",
            domain=access.domain_of(who.email),
        )


def sign_in(tenant: Tenant, who: SignedIn, directory: DirectoryUser | None, ip: str | None = None) -> Outcome:
    """The account and membership of a person Microsoft signed in (created on first sign-in), their role
    set by the rules (never an owner's), their proxy addresses added as aliases.  SigninRefused when the
    address is not the tenant's, or the account is another organization's."""
    check_address(tenant, who)
    config = access.signin_settings(tenant)
    rules = list(access.rules(tenant))
    attributes = directory.attributes if directory is not None else Attributes()
    role, rule = role_for(rules, attributes, config.default_role)
    with transaction.atomic():
        user = account_for(tenant, who)
        membership, created = membership_for(tenant, user, who, role, rule)
        changed = False if created else apply_role(membership, role, rule)
        added = add_aliases(membership, directory)
    return Outcome(user, membership, created, changed, added)


def account_for(tenant: Tenant, who: SignedIn) -> User:
    """The account of the directory object, else of the address (linked now), else a new one without a password."""
    from allauth.account.models import EmailAddress

    identity = access.identity(tenant, who.object_id) if who.object_id else None
    if identity is not None:
        EntraIdentity.objects.filter(pk=identity.pk).update(last_signin_at=timezone.now())
        return identity.user
    user = User.objects.filter(email__iexact=who.email).first()
    if user is None:
        # Microsoft proved the address: the directory owns it, and the domain is this tenant's.
        user = create_user(who.email, None, verified=True)
    else:
        others = user.memberships.exclude(tenant=tenant)
        if others.exists() and not user.memberships.filter(tenant=tenant).exists():
            raise SigninRefused(
                "account_of_another_organization",
                f"{who.email} already has an Archiva account in another organization.",
            )
        if access.identity_of(tenant, user) is not None:
            raise SigninRefused(
                "identity_mismatch",
                f"{who.email} is tied to another Microsoft account of your directory.",
                oid=who.object_id,
            )
        EmailAddress.objects.filter(user=user, email__iexact=who.email).update(verified=True)
        if not EmailAddress.objects.filter(user=user, email__iexact=who.email).exists():
            EmailAddress.objects.create(user=user, email=who.email, verified=True, primary=False)
    if who.object_id:
        EntraIdentity.objects.create(tenant=tenant, user=user, directory_id=who.directory_id, object_id=who.object_id)
    return user


def membership_for(
    tenant: Tenant, user: User, who: SignedIn, role: str, rule: RoleRule | None
) -> tuple[Membership, bool]:
    """The user's membership of the tenant; on first sign-in made with the rules' role and audited."""
    existing = user.memberships.filter(tenant=tenant).select_related("tenant", "user").first()
    if existing is not None:
        return existing, False
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    membership = tenant_access.membership_in(user, tenant)
    record_system_event(
        tenant.pk,
        Action.MEMBER_JOINED,
        {"role": role, "rule": str(rule) if rule else "default role", "source": ALIAS_SOURCE},
        target=who.email,
    )
    return membership, True


def apply_role(membership: Membership, role: str, rule: RoleRule | None) -> bool:
    """Set the rules' role; owners are never changed by a rule.  Audited when it changes."""
    locked = Membership.objects.select_for_update().get(pk=membership.pk)
    if locked.role == Role.OWNER or locked.role == role:
        membership.role = locked.role
        return False
    Membership.objects.filter(pk=locked.pk).update(role=role)
    record_system_event(
        membership.tenant_id,
        Action.ROLE_CHANGED,
        {"old": locked.role, "new": role, "rule": str(rule) if rule else "default role", "source": RULE_SOURCE},
        target=membership.user.email,
    )
    membership.role = role
    return True


def add_aliases(membership: Membership, directory: DirectoryUser | None) -> list[str]:
    """The person's proxy addresses that are not theirs yet, added as aliases (another member's stay theirs)."""
    if directory is None:
        return []
    have = set(tenant_access.addresses_for(membership))
    added = []
    for address in directory.addresses:
        if address in have:
            continue
        try:
            with transaction.atomic():
                add_directory_alias(membership, address, source=ALIAS_SOURCE)
        except ActionRefused:
            log.info("proxy address of member %s is another member's alias already", membership.pk)
            continue
        added.append(address)
    return added
