"""The one way into billing rows (tests/test_access_layer.py keeps it so).

A tenant's billing account is made on first look, on the region's monthly
plan, with its trial counted from the tenant's creation: every tenant has
one without a signal or a migration of old tenants.
"""

from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from billing.models import BillingAccount, Plan, StripeEvent
from tenants.models import Tenant


class NoPlan(Exception):
    """The plans table has no active plan for this region and interval (an operator's to fix)."""


def plans(region: str) -> QuerySet[Plan]:
    """The region's plans on offer, monthly first."""
    return Plan.objects.filter(region=region, active=True).order_by("interval")


def plan(region: str, interval: str = Plan.Interval.MONTH) -> Plan:
    found = plans(region).filter(interval=interval).first()
    if found is None:
        raise NoPlan(f"no active {interval}ly plan for region {region!r}: add one to billing's plans table")
    return found


def account(tenant: Tenant) -> BillingAccount:
    """The tenant's billing account (made on first use, in its trial)."""
    found = BillingAccount.objects.select_related("plan").filter(tenant=tenant).first()
    if found is not None:
        return found
    chosen = plan(tenant.region)
    trial_ends = tenant.created_at + dt.timedelta(days=chosen.trial_days)
    try:
        with transaction.atomic():
            return BillingAccount.objects.create(tenant=tenant, plan=chosen, trial_ends=trial_ends)
    except IntegrityError:  # made meanwhile by another request
        return BillingAccount.objects.select_related("plan").get(tenant=tenant)


def account_for_update(tenant: Tenant) -> BillingAccount:
    """The account, row-locked for the rest of the transaction (made first if missing)."""
    account(tenant)
    return BillingAccount.objects.select_for_update().select_related("plan", "tenant").get(tenant=tenant)


def account_by_stripe(customer: str = "", subscription: str = "") -> BillingAccount | None:
    """The account a Stripe event is about (by its subscription, else its customer), locked; None if unknown."""
    accounts = BillingAccount.objects.select_for_update().select_related("plan", "tenant")
    if subscription:
        found = accounts.filter(stripe_subscription_id=subscription).first()
        if found is not None:
            return found
    return accounts.filter(stripe_customer_id=customer).first() if customer else None


def accounts() -> QuerySet[BillingAccount]:
    """Every billing account, for the daily task (quantity, notices)."""
    return BillingAccount.objects.select_related("plan", "tenant").order_by("id")


def claim_event(event_id: str, type_: str) -> StripeEvent | None:
    """Record a Stripe event as handled; None when it was already (a replay).

    Call inside the transaction that handles it: a failed handling rolls
    the record back, so Stripe's retry is handled again.
    """
    try:
        with transaction.atomic():
            return StripeEvent.objects.create(event_id=event_id, type=type_)
    except IntegrityError:
        return None


def events(tenant: Tenant) -> QuerySet[StripeEvent]:
    return StripeEvent.objects.filter(tenant=tenant).order_by("-received_at", "-id")
