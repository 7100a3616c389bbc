"""The one way into the sign-in rows of a tenant, and the routing of an address to its tenant.

Like `tenants.access`: functions take the tenant and answer 404 alike for
"missing" and "another tenant's".  `tenant_signing_in(email)` is the only
lookup across tenants: the domain of an address, verified by exactly one
tenant of the region (a database constraint), names the tenant.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from tenants.models import Domain, Tenant, User

from .models import EntraIdentity, EntraSignin, RoleRule


def signin_settings(tenant: Tenant) -> EntraSignin:
    """The tenant's "Sign in with Microsoft" settings, created (off) on first use."""
    found, _ = EntraSignin.objects.get_or_create(tenant=tenant)
    return found


def rules(tenant: Tenant) -> QuerySet[RoleRule]:
    """The tenant's role rules in the order they are tried."""
    return RoleRule.objects.filter(tenant=tenant).order_by("position", "id")


def rule(tenant: Tenant, rule_id: int | str) -> RoleRule:
    """One rule of this tenant; 404 for missing and another tenant's alike."""
    try:
        return RoleRule.objects.get(tenant=tenant, pk=int(rule_id))
    except (RoleRule.DoesNotExist, ValueError, TypeError):
        raise Http404("no such rule") from None


def domain_of(email: str) -> str:
    return email.rpartition("@")[2].strip().lower().rstrip(".")


def tenant_signing_in(email: str) -> Tenant | None:
    """The tenant that signs `email` in with Microsoft: the one that verified its domain and turned sign-in on."""
    name = domain_of(email)
    if not name or "@" not in email:
        return None
    domain = Domain.objects.select_related("tenant").filter(name=name, verified_at__isnull=False).first()
    if domain is None:
        return None
    enabled = EntraSignin.objects.filter(tenant=domain.tenant, enabled=True).exists()
    return domain.tenant if enabled else None


def verified_domain_names(tenant: Tenant) -> set[str]:
    return set(Domain.objects.filter(tenant=tenant, verified_at__isnull=False).values_list("name", flat=True))


def identity(tenant: Tenant, object_id: str) -> EntraIdentity | None:
    """The account that signed in to this tenant as directory object `object_id`, if any."""
    return EntraIdentity.objects.select_related("user").filter(tenant=tenant, object_id=object_id).first()


def identity_of(tenant: Tenant, user: User) -> EntraIdentity | None:
    return EntraIdentity.objects.filter(tenant=tenant, user=user).first()


def tenant_by_id(tenant_id: int) -> Tenant:
    """A tenant by id, for a sign-in that kept the id in its (server-side) session while at Microsoft."""
    try:
        return Tenant.objects.get(pk=tenant_id)
    except Tenant.DoesNotExist:
        raise Http404("no such tenant") from None
