"""State changes of tenants, as named functions (the only writers)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from infra.dns import txt_records
from infra.storage import bucket_name_for, get_store
from regions.current import current_region
from tenants.audit import record_event
from tenants.models import Alias, AuditEvent, Domain, Invitation, JournalToken, Membership, Role, Tenant, User
from tenants.signals import domain_verified
from tenants.tokens import hash_secret, new_link_secret, new_token, new_txt_token

DEFAULT_ROTATION_GRACE = timedelta(days=7)
Action = AuditEvent.Action


def _audit(actor: Membership | None, action: str, target: str, ip: str | None, **detail) -> None:
    """Every admin action goes to the audit log, in the transaction of the change.

    `ip` is the request's (views pass `web.audit.client_ip`); an action with
    no actor (a command, a task) is not a person's and is not logged here.
    """
    if actor is not None:
        record_event(actor, action, detail, ip=ip, target=target)


def _issue_token(tenant: Tenant) -> JournalToken:
    # 339 bits of randomness: a collision is a bug, but retrying is cheap.
    for _ in range(3):
        try:
            with transaction.atomic():
                return JournalToken.objects.create(tenant=tenant, token=new_token())
        except IntegrityError:
            continue
    raise RuntimeError("could not issue a unique journal token")


def create_tenant(name: str, owner: User) -> Tenant:
    """Create a tenant in this deployment's region with its owner, token and bucket.

    Database rows are written in one transaction; the bucket is created
    inside it, so a store that refuses leaves no half-made tenant behind.
    """
    public_id = uuid.uuid4()
    with transaction.atomic():
        tenant = Tenant.objects.create(
            public_id=public_id, name=name.strip(), region=current_region().code, bucket=bucket_name_for(public_id)
        )
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
        _issue_token(tenant)
        get_store().create_bucket(tenant.bucket)
    return tenant


def rotate_journal_token(
    tenant: Tenant, grace: timedelta = DEFAULT_ROTATION_GRACE, *, actor: Membership | None = None, ip: str | None = None
) -> JournalToken:
    """Issue a new token; current ones keep working until now + grace."""
    now = timezone.now()
    with transaction.atomic():
        JournalToken.objects.filter(tenant=tenant, expires_at__isnull=True).update(
            expires_at=now + grace, updated_at=now
        )
        # The log names no token: it is a credential.
        _audit(actor, Action.JOURNAL_TOKEN_ROTATED, "journal address", ip, grace_days=grace.days)
        return _issue_token(tenant)


# --- the team ----------------------------------------------------------------
# Invariants kept here, whoever calls: a tenant always has an owner, and only
# owners make, unmake or remove owners.  Views check "is an admin" first.

INVITATION_LIFETIME = timedelta(days=7)


class ActionRefused(Exception):
    """A change the rules forbid; the message is written for the person who asked."""


def _check_may_grant(actor: Membership, role: str) -> None:
    if role not in Role.values:
        raise ActionRefused(f"{role!r} is not a role.")
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise PermissionDenied("only owners make owners")


def _check_may_change(actor: Membership, target: Membership) -> None:
    if target.tenant_id != actor.tenant_id:
        raise PermissionDenied("another tenant's member")
    if target.role == Role.OWNER and actor.role != Role.OWNER:
        raise PermissionDenied("only owners change owners")


def _lock_owners(tenant: Tenant) -> list[int]:
    """Lock the tenant's owner rows until the transaction ends; their ids."""
    return list(
        Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER).values_list("id", flat=True)
    )


def invite_member(actor: Membership, email: str, role: str, ip: str | None = None) -> tuple[Invitation, str]:
    """Invite `email` with `role`; returns the invitation and the secret for its link.

    A pending invitation of the same address is replaced (its link stops
    working), so "invite again" is also "resend".
    """
    _check_may_grant(actor, role)
    email = email.strip().lower()
    tenant = actor.tenant
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise ActionRefused(f"{email} is already a member of {tenant.name}.")
    secret = new_link_secret()
    now = timezone.now()
    with transaction.atomic():
        Invitation.objects.filter(tenant=tenant, email=email, accepted_at__isnull=True).delete()
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=email,
            role=role,
            token_hash=hash_secret(secret),
            invited_by=actor.user,
            created_at=now,
            expires_at=now + INVITATION_LIFETIME,
        )
        _audit(actor, Action.INVITATION_SENT, email, ip, role=role)
    return invitation, secret


def revoke_invitation(actor: Membership, invitation: Invitation, ip: str | None = None) -> None:
    if invitation.tenant_id != actor.tenant_id:
        raise PermissionDenied("another tenant's invitation")
    if invitation.role == Role.OWNER and actor.role != Role.OWNER:
        raise PermissionDenied("only owners revoke an owner's invitation")
    with transaction.atomic():
        if Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True).delete()[0]:
            _audit(actor, Action.INVITATION_REVOKED, invitation.email, ip, role=invitation.role)


def accept_invitation(invitation: Invitation, user: User, ip: str | None = None) -> Membership:
    """Make `user` a member with the invited role; the invitation is used up.

    An account belongs to one organization: a member of another tenant is
    refused rather than silently given a second archive.
    """
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().filter(pk=invitation.pk).first()
        if locked is None or not locked.is_pending():
            raise ActionRefused("This invitation has expired or was already used. Ask your admin for a new one.")
        existing = Membership.objects.filter(user=user).select_related("tenant").first()
        if existing is not None:
            if existing.tenant_id == locked.tenant_id:
                raise ActionRefused(f"You are already a member of {existing.tenant.name}.")
            raise ActionRefused(
                f"Your account already belongs to {existing.tenant.name}; an account belongs to one organization. "
                "Sign up with the invited address instead."
            )
        membership = Membership.objects.create(tenant_id=locked.tenant_id, user=user, role=locked.role)
        locked.accepted_at = timezone.now()
        locked.accepted_by = user
        locked.save(update_fields=["accepted_at", "accepted_by"])
        membership.user = user
        _audit(membership, Action.INVITATION_ACCEPTED, user.email, ip, role=locked.role)
    return membership


def change_role(actor: Membership, target: Membership, role: str, ip: str | None = None) -> Membership:
    _check_may_grant(actor, role)
    _check_may_change(actor, target)
    with transaction.atomic():
        owner_ids = _lock_owners(actor.tenant)
        if target.pk in owner_ids and role != Role.OWNER and len(owner_ids) == 1:
            raise ActionRefused(f"{target.user.email} is the last owner. Make someone else an owner first.")
        Membership.objects.filter(pk=target.pk, tenant=actor.tenant).update(role=role)
        _audit(actor, Action.ROLE_CHANGED, target.user.email, ip, old=target.role, new=role)
    target.role = role
    return target


def remove_member(actor: Membership, target: Membership, ip: str | None = None) -> None:
    """Remove a member from the tenant (their account stays, with no access)."""
    _check_may_change(actor, target)
    with transaction.atomic():
        owner_ids = _lock_owners(actor.tenant)
        if target.pk in owner_ids and len(owner_ids) == 1:
            raise ActionRefused(f"{target.user.email} is the last owner and cannot be removed.")
        Membership.objects.filter(pk=target.pk, tenant=actor.tenant).delete()
        _audit(actor, Action.MEMBER_REMOVED, target.user.email, ip, role=target.role)


def add_alias(actor: Membership, target: Membership, address: str, ip: str | None = None) -> Alias:
    """Let `target` search the mail of another address (a shared mailbox, an old name)."""
    _check_may_change(actor, target)
    address = address.strip().lower()
    try:
        with transaction.atomic():
            alias = Alias.objects.create(tenant=actor.tenant, membership=target, address=address)
            _audit(actor, Action.ALIAS_ADDED, target.user.email, ip, alias=address)
            return alias
    except IntegrityError:
        raise ActionRefused(f"{address} is already an alias of a member of {actor.tenant.name}.") from None


def remove_alias(actor: Membership, alias: Alias, ip: str | None = None) -> None:
    _check_may_change(actor, alias.membership)
    with transaction.atomic():
        if Alias.objects.filter(pk=alias.pk, tenant=actor.tenant).delete()[0]:
            _audit(actor, Action.ALIAS_REMOVED, alias.membership.user.email, ip, alias=alias.address)


# --- domains -----------------------------------------------------------------


def add_domain(actor: Membership, name: str, ip: str | None = None) -> Domain:
    """Claim a domain (already normalized: lower-case A-labels); verified later by DNS."""
    tenant = actor.tenant
    if Domain.objects.filter(name=name, verified_at__isnull=False).exclude(tenant=tenant).exists():
        raise ActionRefused(f"{name} is verified by another organization. Contact support if it is yours.")
    try:
        with transaction.atomic():
            domain = Domain.objects.create(tenant=tenant, name=name, txt_token=new_txt_token())
            _audit(actor, Action.DOMAIN_ADDED, name, ip)
            return domain
    except IntegrityError:
        raise ActionRefused(f"{name} is already on your list.") from None


def verify_domain(domain: Domain, actor: Membership | None = None, ip: str | None = None) -> Domain:
    """Mark the domain verified if its TXT record is in the DNS now.

    Raises ActionRefused (record missing or wrong, or the name verified by
    another tenant) or `infra.dns.LookupFailed` (the DNS did not answer).
    """
    if domain.is_verified:
        return domain
    values = [value.strip() for value in txt_records(domain.txt_name)]
    if domain.txt_value not in values:
        if not values:
            raise ActionRefused(
                f"No TXT record found at {domain.txt_name} yet. "
                "New records can take a few minutes to appear; try again shortly."
            )
        found = ", ".join(f'"{value}"' for value in values[:5])
        raise ActionRefused(
            f'The TXT record at {domain.txt_name} does not match. Expected "{domain.txt_value}", found {found}.'
        )
    domain.verified_at = timezone.now()
    try:
        with transaction.atomic():
            domain.save(update_fields=["verified_at", "updated_at"])
            _audit(actor, Action.DOMAIN_VERIFIED, domain.name, ip)
    except IntegrityError:
        domain.verified_at = None
        raise ActionRefused(
            f"{domain.name} is verified by another organization. Contact support if it is yours."
        ) from None
    domain_verified.send(sender=Domain, domain=domain)  # ingest releases the validation mail held until now
    return domain


def verify_domain_by_consent(
    tenant: Tenant, name: str, *, proof: str, actor: Membership | None = None, ip: str | None = None
) -> Domain:
    """Mark `name` verified for the tenant without DNS: ownership proven otherwise (`proof`).

    Used for the domains Microsoft 365 lists as verified for the directory
    whose admin consented to our app (ownership proven to Microsoft by DNS
    already).  Adds the domain when missing; ActionRefused when another
    tenant has it verified.  Sends `domain_verified` like the DNS check.
    """
    name = name.strip().lower().rstrip(".")
    if Domain.objects.filter(name=name, verified_at__isnull=False).exclude(tenant=tenant).exists():
        raise ActionRefused(f"{name} is verified by another organization. Contact support if it is yours.")
    try:
        with transaction.atomic():
            domain, created = Domain.objects.select_for_update().get_or_create(
                tenant=tenant, name=name, defaults={"txt_token": new_txt_token()}
            )
            if domain.is_verified:
                return domain
            domain.verified_at = timezone.now()
            domain.save(update_fields=["verified_at", "updated_at"])
            if created:
                _audit(actor, Action.DOMAIN_ADDED, name, ip, proof=proof)
            _audit(actor, Action.DOMAIN_VERIFIED, name, ip, proof=proof)
    except IntegrityError:
        raise ActionRefused(f"{name} is verified by another organization. Contact support if it is yours.") from None
    domain_verified.send(sender=Domain, domain=domain)
    return domain


def add_directory_alias(
    target: Membership, address: str, *, source: str, actor: Membership | None = None, ip: str | None = None
) -> Alias:
    """An alias a directory says belongs to `target` (e.g. a Microsoft 365 proxy address).

    Unlike `add_alias` it may come from a task with no actor; ActionRefused
    when the address is another member's alias already.
    """
    address = address.strip().lower()
    try:
        with transaction.atomic():
            alias = Alias.objects.create(tenant_id=target.tenant_id, membership=target, address=address)
            _audit(actor, Action.ALIAS_ADDED, target.user.email, ip, alias=address, source=source)
            return alias
    except IntegrityError:
        raise ActionRefused(f"{address} is already an alias of a member.") from None


def remove_directory_alias(
    alias: Alias, *, source: str, actor: Membership | None = None, ip: str | None = None
) -> None:
    """Remove an alias the directory no longer lists for its member."""
    with transaction.atomic():
        if Alias.objects.filter(pk=alias.pk).delete()[0]:
            _audit(actor, Action.ALIAS_REMOVED, alias.membership.user.email, ip, alias=alias.address, source=source)


def remove_domain(actor: Membership, domain: Domain, ip: str | None = None) -> None:
    with transaction.atomic():
        if Domain.objects.filter(pk=domain.pk, tenant=actor.tenant).delete()[0]:
            _audit(actor, Action.DOMAIN_REMOVED, domain.name, ip, was_verified=domain.is_verified)


def set_m365_organization(
    tenant: Tenant, organization: str, *, actor: Membership | None = None, ip: str | None = None
) -> None:
    """Record which Microsoft 365 organization journals to this tenant ("" to forget it)."""
    old = tenant.m365_organization
    tenant.m365_organization = organization.strip().lower()
    with transaction.atomic():
        tenant.save(update_fields=["m365_organization"])
        _audit(actor, Action.SETTING_CHANGED, "m365_organization", ip, old=old, new=tenant.m365_organization)


# --- accounts ----------------------------------------------------------------


def create_user(email: str, password: str | None, *, verified: bool = True) -> User:
    """An account as allauth's sign-up leaves it: the user and its primary address.

    `verified` is whether the address was confirmed (by the mailed link, or
    by opening an invitation sent to it).  Used where an account is made
    outside the sign-up form: commands, and the tests' fixtures.
    """
    from allauth.account.models import EmailAddress

    with transaction.atomic():
        user = User.objects.create_user(email=email, password=password)
        EmailAddress.objects.create(user=user, email=user.email, verified=verified, primary=True)
    return user
