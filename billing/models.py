"""Models of the billing app: plans as data, a billing account per tenant, and the Stripe events seen.

Tenant-owned rows (`BillingAccount`, `StripeEvent`) are reached through
`billing.access` and changed through `billing.actions` and
`billing.webhooks` (tests/test_access_layer.py enforces it).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Plan(models.Model):
    """What a mailbox costs in a region, per month or per year: data, seeded by a
    migration and changed by an operator, never by code.

    `code` is also the plan's id on Stripe (created there on first use).
    """

    class Interval(models.TextChoices):
        MONTH = "month", "month"
        YEAR = "year", "year"

    code = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    region = models.CharField(max_length=8)  # regions.registry code
    currency = models.CharField(max_length=3)  # ISO 4217, lower-case as Stripe writes it
    interval = models.CharField(max_length=8, choices=Interval.choices)
    unit_amount = models.PositiveIntegerField()  # per mailbox per interval, in the currency's cents
    trial_days = models.PositiveIntegerField(default=30)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["region", "interval"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"

    @property
    def price(self) -> str:
        """ "$3.00" or "3.00 €": what one mailbox costs per interval."""
        amount = f"{self.unit_amount / 100:.2f}"
        return {"usd": f"${amount}", "eur": f"{amount} €"}.get(self.currency, f"{amount} {self.currency.upper()}")


class BillingStatus(models.TextChoices):
    TRIAL = "trial", "trial"
    ACTIVE = "active", "active"
    PAST_DUE = "past_due", "past due"
    CANCELED = "canceled", "canceled"


class BillingAccount(models.Model):
    """A tenant's standing with Stripe: its customer, subscription and what they last said.

    `past_due_since` starts the grace period (a failed payment, or a trial
    that ended without a subscription is judged from `trial_ends`);
    `canceled_at` starts the 30 days the archive stays readable after a cancellation.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_account")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    status = models.CharField(max_length=16, choices=BillingStatus.choices, default=BillingStatus.TRIAL)
    trial_ends = models.DateTimeField()
    billing_email = models.EmailField(blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    stripe_subscription_id = models.CharField(max_length=255, blank=True)
    stripe_item_id = models.CharField(max_length=255, blank=True)
    quantity = models.PositiveIntegerField(default=0)  # on the subscription, as last set or reported
    quantity_synced_at = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    past_due_since = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    # When the admins were last told of a failed payment / of read-only mode (one mail each, not daily).
    notified_past_due_at = models.DateTimeField(null=True, blank=True)
    notified_read_only_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing account of tenant {self.tenant_id}: {self.status}"


class StripeEvent(models.Model):
    """A Stripe webhook event handled once: its id is unique, so a replay changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="stripe_events")
    outcome = models.CharField(max_length=200, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"stripe event {self.event_id} ({self.type})"
