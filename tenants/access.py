"""The one way into tenant data.

Views and tasks reach tenant-owned rows only through these functions.
They take the user (or the tenant) and answer 404 alike for "missing" and
"belongs to another tenant", so nothing leaks the existence of others' data.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from ingest.models import Delivery
from tenants.models import JournalToken, Membership, Tenant, User


def membership_for(user: User) -> Membership:
    """The user's membership (the first, for a member of several); 404 if none."""
    if not user.is_authenticated:
        raise Http404("not a member")
    membership = Membership.objects.select_related("tenant").filter(user=user).order_by("id").first()
    if membership is None:
        raise Http404("not a member")
    return membership


def current_token(tenant: Tenant) -> JournalToken:
    token = JournalToken.objects.filter(tenant=tenant, expires_at__isnull=True).order_by("-created_at").first()
    if token is None:
        raise Http404("no journal token")
    return token


def tokens_in_grace(tenant: Tenant) -> QuerySet[JournalToken]:
    from django.utils import timezone

    return JournalToken.objects.filter(tenant=tenant, expires_at__gt=timezone.now()).order_by("-created_at")


def deliveries(tenant: Tenant) -> QuerySet[Delivery]:
    return Delivery.objects.filter(tenant=tenant)


def delivery(tenant: Tenant, delivery_id: int) -> Delivery:
    try:
        return Delivery.objects.get(tenant=tenant, pk=delivery_id)
    except (Delivery.DoesNotExist, ValueError, TypeError):
        raise Http404("no such delivery") from None
