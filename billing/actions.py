"""Changes to a tenant's billing, as named functions, each in the audit log.

Owners subscribe, cancel, resume and change the billing email; the daily
task keeps the subscription's quantity on the mailbox count; webhooks
(`billing.webhooks`) record what Stripe says happened.  Each change locks
the tenant's account row, so two clicks never make two subscriptions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.validators import validate_email
from django.db import transaction

from billing import access, notices, stripe_api
from billing.mailboxes import active_mailboxes
from billing.models import BillingAccount, BillingStatus, Plan
from billing.standing import GRACE, standing_of
from tenants.audit import record_event, record_system_event
from tenants.models import AuditEvent, Membership, Role, Tenant

Action = AuditEvent.Action
MIN_TRIAL_LEFT = dt.timedelta(hours=1)  # less than this left of the trial: bill from now


class BillingRefused(Exception):
    """A billing change the rules or Stripe refuse; the message is for the owner."""


def _owner_only(membership: Membership) -> None:
    if membership.role != Role.OWNER:
        raise PermissionDenied("only an owner can change billing")


def _status_from_stripe(subscription: dict[str, Any], now: dt.datetime) -> str:
    """Stripe's subscription status in ours.  `incomplete` with a trial still running is
    how localstripe shows what Stripe calls `trialing`."""
    status = subscription.get("status", "")
    trial_end = stripe_api.timestamp(subscription.get("trial_end"))
    if status == "trialing" or (status == "incomplete" and trial_end is not None and trial_end > now):
        return BillingStatus.TRIAL
    if status == "active":
        return BillingStatus.ACTIVE
    if status in ("canceled", "incomplete_expired"):
        return BillingStatus.CANCELED
    return BillingStatus.PAST_DUE  # past_due, unpaid, incomplete (the first payment failed)


def apply_subscription(
    account: BillingAccount, subscription: dict[str, Any], now: dt.datetime, why: str = ""
) -> list[str]:
    """Take the subscription's state as Stripe reports it; the fields that changed (saved).

    With `why` (a webhook's event type) a change of status goes to the audit log as the
    system's; an owner's own change is logged by the action that made it.
    """
    before = account.status
    item = stripe_api.subscription_item(subscription)
    values: dict[str, Any] = {
        "stripe_subscription_id": subscription.get("id", account.stripe_subscription_id),
        "stripe_item_id": item.get("id", account.stripe_item_id),
        "quantity": int(item.get("quantity") or subscription.get("quantity") or account.quantity),
        "current_period_end": stripe_api.period_end(subscription) or account.current_period_end,
        "cancel_at_period_end": bool(subscription.get("cancel_at_period_end")),
    }
    status = _status_from_stripe(subscription, now)
    values |= _status_fields(account, status, now)
    changed = [name for name, value in values.items() if getattr(account, name) != value]
    for name in changed:
        setattr(account, name, values[name])
    if changed:
        account.save(update_fields=[*changed, "updated_at"])
    if why and account.status != before:
        detail = {"from": before, "to": account.status, "why": why}
        record_system_event(
            account.tenant_id, Action.BILLING_STATUS_CHANGED, detail, target=account.stripe_subscription_id
        )
    return changed


def _status_fields(account: BillingAccount, status: str, now: dt.datetime) -> dict[str, Any]:
    fields: dict[str, Any] = {"status": status}
    if status == BillingStatus.PAST_DUE:
        fields["past_due_since"] = account.past_due_since or now
    else:
        fields["past_due_since"] = None
        fields["notified_past_due_at"] = None
        fields["notified_read_only_at"] = None
    if status == BillingStatus.CANCELED:
        fields["canceled_at"] = account.canceled_at or now
    else:
        fields["canceled_at"] = None
    return fields


def mailbox_quantity(tenant: Tenant, now: dt.datetime) -> int:
    """What to bill: the active mailboxes, at least one (Stripe wants a positive quantity)."""
    return max(1, len(active_mailboxes(tenant, now)))


def _customer(account: BillingAccount, membership: Membership) -> str:
    if not account.stripe_customer_id:
        email = account.billing_email or membership.user.email
        account.stripe_customer_id = stripe_api.create_customer(
            email, account.tenant.name, str(account.tenant.public_id)
        )
        account.billing_email = email
        account.save(update_fields=["stripe_customer_id", "billing_email", "updated_at"])
    return account.stripe_customer_id


def _plan(account: BillingAccount, interval: str) -> Plan:
    chosen = access.plan(account.tenant.region, interval)
    stripe_api.ensure_plan(chosen.code, chosen.name, chosen.currency, chosen.interval, chosen.unit_amount)
    return chosen


def _has_live_subscription(account: BillingAccount) -> bool:
    return bool(account.stripe_subscription_id) and account.status != BillingStatus.CANCELED


def subscribe(
    membership: Membership, payment_method: str, interval: str, *, ip: str | None, now: dt.datetime
) -> BillingAccount:
    """Start the subscription with this payment method (an id from Stripe.js or a Stripe test method).

    The quantity is the mailbox count; the rest of a running trial stays free
    (Stripe's `trial_end`).  Refused while a subscription is live.
    """
    _owner_only(membership)
    if not stripe_api.PAYMENT_METHOD_RE.fullmatch(payment_method or ""):
        raise BillingRefused("Choose a payment method: the card form did not give one.")
    if interval not in Plan.Interval.values:
        raise BillingRefused(f"Unknown billing interval {interval!r}: choose month or year.")
    try:
        with transaction.atomic():  # the customer is kept even if the card is refused below
            account = access.account_for_update(membership.tenant)
            if _has_live_subscription(account):
                raise BillingRefused("This organization already has a subscription.")
            customer = _customer(account, membership)
    except stripe_api.BillingError as error:
        raise BillingRefused(str(error)) from error
    with transaction.atomic():
        account = access.account_for_update(membership.tenant)
        if _has_live_subscription(account):
            raise BillingRefused("This organization already has a subscription.")
        try:
            chosen = _plan(account, interval)
            stripe_api.attach_default_payment_method(customer, payment_method)
            quantity = mailbox_quantity(account.tenant, now)
            trial_end = account.trial_ends if account.trial_ends - now > MIN_TRIAL_LEFT else None
            subscription = stripe_api.create_subscription(customer, chosen.code, quantity, trial_end)
        except (stripe_api.BillingError, access.NoPlan) as error:
            raise BillingRefused(str(error)) from error
        account.plan = chosen
        account.save(update_fields=["plan", "updated_at"])
        apply_subscription(account, subscription, now)
        account.quantity_synced_at = now
        account.save(update_fields=["quantity_synced_at"])
        detail = {"plan": chosen.code, "quantity": account.quantity, "status": account.status}
        record_event(membership, Action.BILLING_SUBSCRIBED, detail, ip=ip, target=account.stripe_subscription_id)
    return account


def sync_quantity(tenant: Tenant, now: dt.datetime) -> BillingAccount:
    """Set the subscription's quantity to the mailbox count (prorated by Stripe); a no-op when equal."""
    with transaction.atomic():
        account = access.account_for_update(tenant)
        if not _has_live_subscription(account) or not account.stripe_item_id:
            return account
        quantity = mailbox_quantity(tenant, now)
        if quantity != account.quantity:
            before = account.quantity
            subscription = stripe_api.set_quantity(account.stripe_subscription_id, account.stripe_item_id, quantity)
            apply_subscription(account, subscription, now)
            detail = {"from": before, "to": account.quantity}
            record_system_event(
                tenant.pk, Action.BILLING_QUANTITY_CHANGED, detail, target=account.stripe_subscription_id
            )
        account.quantity_synced_at = now
        account.save(update_fields=["quantity_synced_at"])
    return account


def cancel(membership: Membership, *, ip: str | None, now: dt.datetime) -> BillingAccount:
    """Cancel at the end of the paid period (Stripe then ends it: `customer.subscription.deleted`)."""
    _owner_only(membership)
    with transaction.atomic():
        account = access.account_for_update(membership.tenant)
        if not _has_live_subscription(account):
            raise BillingRefused("There is no subscription to cancel.")
        if account.cancel_at_period_end:
            raise BillingRefused("The subscription is already canceled at the end of its period.")
        try:
            subscription = stripe_api.set_cancel_at_period_end(account.stripe_subscription_id, True)
        except stripe_api.BillingError as error:
            raise BillingRefused(str(error)) from error
        apply_subscription(account, subscription, now)
        ends = account.current_period_end.isoformat() if account.current_period_end else ""
        record_event(membership, Action.BILLING_CANCELED, {"ends": ends}, ip=ip, target=account.stripe_subscription_id)
    return account


def resume(membership: Membership, *, ip: str | None, now: dt.datetime) -> BillingAccount:
    """Undo a cancellation: keep the subscription, or start a new one once Stripe has ended it
    (with the customer's saved card)."""
    _owner_only(membership)
    with transaction.atomic():
        account = access.account_for_update(membership.tenant)
        try:
            if _has_live_subscription(account) and account.cancel_at_period_end:
                subscription = stripe_api.set_cancel_at_period_end(account.stripe_subscription_id, False)
            elif account.status == BillingStatus.CANCELED and account.stripe_customer_id:
                quantity = mailbox_quantity(account.tenant, now)
                chosen = _plan(account, account.plan.interval)
                subscription = stripe_api.create_subscription(account.stripe_customer_id, chosen.code, quantity, None)
            else:
                raise BillingRefused("There is no canceled subscription to resume.")
        except stripe_api.BillingError as error:
            raise BillingRefused(str(error)) from error
        apply_subscription(account, subscription, now)
        detail = {"status": account.status, "quantity": account.quantity}
        record_event(membership, Action.BILLING_RESUMED, detail, ip=ip, target=account.stripe_subscription_id)
    return account


def change_billing_email(membership: Membership, email: str, *, ip: str | None) -> BillingAccount:
    """Where Stripe sends invoices and receipts, and Archiva its billing notices."""
    _owner_only(membership)
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except Exception:
        raise BillingRefused(f"{email or 'An empty address'} is not an email address.") from None
    with transaction.atomic():
        account = access.account_for_update(membership.tenant)
        before = account.billing_email
        if account.stripe_customer_id:
            try:
                stripe_api.set_customer_email(account.stripe_customer_id, email)
            except stripe_api.BillingError as error:
                raise BillingRefused(str(error)) from error
        account.billing_email = email
        account.save(update_fields=["billing_email", "updated_at"])
        record_event(membership, Action.BILLING_EMAIL_CHANGED, {"from": before, "to": email}, ip=ip, target=email)
    return account


# --- what Stripe tells (billing.webhooks), and the daily notices -------------------------------


def record_status(account: BillingAccount, status: str, now: dt.datetime, why: str) -> bool:
    """Set the status (with its dates) from a webhook; whether it changed (then audited)."""
    before = account.status
    values = _status_fields(account, status, now)
    changed = [name for name, value in values.items() if getattr(account, name) != value]
    for name in changed:
        setattr(account, name, values[name])
    if changed:
        account.save(update_fields=[*changed, "updated_at"])
    if before != status:
        detail = {"from": before, "to": status, "why": why}
        record_system_event(
            account.tenant_id, Action.BILLING_STATUS_CHANGED, detail, target=account.stripe_subscription_id
        )
    return before != status


def payment_failed(account: BillingAccount, now: dt.datetime) -> None:
    """A payment failed: past due (the grace starts now, or went on), and the admins are told once."""
    record_status(account, BillingStatus.PAST_DUE, now, "invoice.payment_failed")
    if account.notified_past_due_at is None:
        grace_ends = (account.past_due_since or now) + GRACE
        notices.payment_failed(account, f"{grace_ends:%d %b %Y}")
        account.notified_past_due_at = now
        account.save(update_fields=["notified_past_due_at"])


def paid(account: BillingAccount, invoice: dict[str, Any], now: dt.datetime) -> None:
    """An invoice was paid: a past-due account is in good standing again; a trial's free
    first invoice (nothing paid) leaves the trial running."""
    charged = int(invoice.get("amount_paid") or 0) > 0
    if account.status == BillingStatus.PAST_DUE or (account.status == BillingStatus.TRIAL and charged):
        record_status(account, BillingStatus.ACTIVE, now, "invoice.paid")


def subscription_ended(account: BillingAccount, now: dt.datetime) -> None:
    record_status(account, BillingStatus.CANCELED, now, "customer.subscription.deleted")
    account.cancel_at_period_end = False
    account.save(update_fields=["cancel_at_period_end"])


def tend(tenant: Tenant, now: dt.datetime) -> BillingAccount:
    """The daily round for one tenant: quantity to the mailbox count, and the read-only notice once."""
    account = sync_quantity(tenant, now)
    if standing_of(account, now).read_only and account.notified_read_only_at is None:
        with transaction.atomic():
            account = access.account_for_update(tenant)
            if account.notified_read_only_at is None:
                notices.read_only(account)
                account.notified_read_only_at = now
                account.save(update_fields=["notified_read_only_at"])
    return account
