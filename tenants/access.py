"""The one way into tenant data.

Views and tasks reach tenant-owned rows only through these functions.
They take the user (or the tenant) and answer 404 alike for "missing" and
"belongs to another tenant", so nothing leaks the existence of others' data.
This module needs only tenants' own models; messages, deliveries and the
search scope are in `archive.access`, which builds on it.
"""

from __future__ import annotations

import uuid

from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.http import Http404, HttpRequest
from django.utils import timezone

from tenants.api_tokens import hash_token
from tenants.models import Alias, ApiToken, AuditEvent, Domain, Invitation, JournalToken, Membership, Role, Tenant, User
from tenants.tokens import hash_secret


def membership_for(user: User) -> Membership:
    """The user's membership (the first, for a member of several); 404 if none."""
    if not user.is_authenticated:
        raise Http404("not a member")
    membership = Membership.objects.select_related("tenant").filter(user=user).order_by("id").first()
    if membership is None:
        raise Http404("not a member")
    return membership


# Where `request_membership` keeps what it found: (the user's id, the membership or None).
REQUEST_MEMBERSHIP = "_archiva_membership"


def request_membership(request: HttpRequest) -> Membership | None:
    """The signed-in user's membership, or None (a visitor, a person of no tenant).

    Looked up once per request and kept on it: the MFA check, the billing
    gate, the view and the templates all ask.  Kept with the user it was
    found for, so a sign-in during the request looks again.
    """
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    kept = getattr(request, REQUEST_MEMBERSHIP, None)
    if kept is not None and kept[0] == user.pk:
        membership: Membership | None = kept[1]
        return membership
    try:
        membership = membership_for(user)
    except Http404:
        membership = None
    setattr(request, REQUEST_MEMBERSHIP, (user.pk, membership))
    return membership


def request_member(request: HttpRequest) -> Membership:
    """As `request_membership`, for a view only members may see: 404 if none (like `membership_for`)."""
    membership = request_membership(request)
    if membership is None:
        raise Http404("not a member")
    return membership


def current_token(tenant: Tenant) -> JournalToken:
    token = JournalToken.objects.filter(tenant=tenant, expires_at__isnull=True).order_by("-created_at").first()
    if token is None:
        raise Http404("no journal token")
    return token


def tokens_in_grace(tenant: Tenant) -> QuerySet[JournalToken]:
    return JournalToken.objects.filter(tenant=tenant, expires_at__gt=timezone.now()).order_by("-created_at")


# --- members, the audit log, API tokens -------------------------------------


def membership_in(user: User, tenant: Tenant) -> Membership:
    """The user's membership of this tenant; 404 if none."""
    membership = Membership.objects.select_related("tenant", "user").filter(user=user, tenant=tenant).first()
    if membership is None:
        raise Http404("not a member")
    return membership


def mail_addresses(membership: Membership) -> list[str] | None:
    """None when the member sees all of the tenant's mail, else the addresses
    that scope it: verified addresses plus aliases an admin assigned."""
    if membership.sees_all_mail:
        return None
    return addresses_for(membership)


def tenant_by_reference(reference: str) -> Tenant:
    """A tenant by public id or exact name, for operators' commands; LookupError if none or ambiguous."""
    try:
        return Tenant.objects.get(public_id=uuid.UUID(reference))
    except (ValueError, Tenant.DoesNotExist):
        pass
    found = list(Tenant.objects.filter(name=reference)[:2])
    if len(found) != 1:
        raise LookupError(f"{'no' if not found else 'more than one'} tenant named {reference!r}")
    return found[0]


def tenants_of_region(region: str) -> QuerySet[Tenant]:
    """Every tenant of a region, for the scheduled jobs that visit each (retention,
    the storage scrub); `.get(pk=…)` finds the one a task names."""
    return Tenant.objects.filter(region=region).order_by("pk")


def audit_events(tenant: Tenant) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(tenant=tenant).select_related("user", "token").order_by("-created_at", "-id")


def audit_actors(tenant: Tenant) -> list[str]:
    """Everyone the tenant's audit log names as an actor, for the page's "who" filter."""
    return list(
        AuditEvent.objects.filter(tenant=tenant)
        .exclude(actor_email="")
        .order_by("actor_email")
        .values_list("actor_email", flat=True)
        .distinct()
    )


def api_tokens(tenant: Tenant) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(tenant=tenant).select_related("created_by").order_by("-created_at", "-id")


def api_token(tenant: Tenant, token_id: int | str) -> ApiToken:
    try:
        return ApiToken.objects.get(tenant=tenant, pk=int(token_id))
    except (ApiToken.DoesNotExist, ValueError, TypeError):
        raise Http404("no such token") from None


def membership_for_api_token(secret: str) -> tuple[Membership, ApiToken] | None:
    """Who a Bearer token acts for: its creator, in the token's tenant, with the
    creator's current role.  None for an unknown or revoked token, or when the
    creator is no longer a member."""
    token = ApiToken.objects.select_related("tenant").filter(token_hash=hash_token(secret)).first()
    if token is None or not token.is_active:
        return None
    membership = (
        Membership.objects.select_related("tenant", "user")
        .filter(user_id=token.created_by_id, tenant_id=token.tenant_id, user__is_active=True)
        .first()
    )
    return (membership, token) if membership else None


# --- the team ----------------------------------------------------------------


def members(tenant: Tenant) -> QuerySet[Membership]:
    """The tenant's memberships with their users and aliases, owners first."""
    order = {Role.OWNER: 0, Role.ADMIN: 1, Role.AUDITOR: 2, Role.USER: 3}
    rank = Case(*(When(role=r, then=Value(i)) for r, i in order.items()), output_field=IntegerField())
    return (
        Membership.objects.filter(tenant=tenant)
        .select_related("user")
        .prefetch_related("aliases")
        .annotate(role_rank=rank)
        .order_by("role_rank", "user__email")
    )


def member(tenant: Tenant, membership_id: int | str) -> Membership:
    """One membership of this tenant; 404 for missing and another tenant's alike."""
    try:
        return Membership.objects.select_related("user", "tenant").get(tenant=tenant, pk=int(membership_id))
    except (Membership.DoesNotExist, ValueError, TypeError):
        raise Http404("no such member") from None


def owners(tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER)


def alias(tenant: Tenant, alias_id: int | str) -> Alias:
    try:
        return Alias.objects.select_related("membership").get(tenant=tenant, pk=int(alias_id))
    except (Alias.DoesNotExist, ValueError, TypeError):
        raise Http404("no such alias") from None


def aliases(tenant: Tenant) -> QuerySet[Alias]:
    """Every alias of the tenant's members."""
    return Alias.objects.filter(tenant=tenant).select_related("membership__user")


def addresses_for(membership: Membership) -> list[str]:
    """The addresses whose mail this member may search as a plain user.

    Their verified addresses (allauth's EmailAddress, verified only) plus the
    aliases an admin assigned them in this tenant; lower-cased, sorted, no
    duplicates.  Unverified addresses never count: anyone can type one.
    """
    from allauth.account.models import EmailAddress

    verified = EmailAddress.objects.filter(user_id=membership.user_id, verified=True).values_list("email", flat=True)
    aliases = Alias.objects.filter(membership=membership).values_list("address", flat=True)
    return sorted({address.strip().lower() for address in [*verified, *aliases] if address})


def pending_invitations(tenant: Tenant) -> QuerySet[Invitation]:
    return (
        Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation(tenant: Tenant, invitation_id: int | str) -> Invitation:
    try:
        return Invitation.objects.get(tenant=tenant, pk=int(invitation_id), accepted_at__isnull=True)
    except (Invitation.DoesNotExist, ValueError, TypeError):
        raise Http404("no such invitation") from None


def invitation_by_token(token: str) -> Invitation:
    """The pending invitation a link's token names; 404 when unknown, used or expired.

    The tenant comes from this lookup only (like a journal token).
    """
    found = Invitation.objects.select_related("tenant", "invited_by").filter(token_hash=hash_secret(token)).first()
    if found is None or not found.is_pending():
        raise Http404("no such invitation")
    return found


# --- domains -----------------------------------------------------------------


def domains(tenant: Tenant) -> QuerySet[Domain]:
    return Domain.objects.filter(tenant=tenant).order_by("name")


def verified_domains(tenant: Tenant) -> QuerySet[Domain]:
    return Domain.objects.filter(tenant=tenant, verified_at__isnull=False).order_by("name")


def domain(tenant: Tenant, domain_id: int | str) -> Domain:
    try:
        return Domain.objects.get(tenant=tenant, pk=int(domain_id))
    except (Domain.DoesNotExist, ValueError, TypeError):
        raise Http404("no such domain") from None
