"""Stripe's webhook events (`POST /stripe/webhook`): verified, handled once, in one transaction.

The signature is checked with `STRIPE_WEBHOOK_SECRET` by
`stripe.Webhook.construct_event` (which also refuses a signature older than
five minutes: a captured request replayed later).  The event id is recorded
in the transaction that handles the event, so a replay of a handled event
changes nothing, and an event whose handling failed is handled again when
Stripe retries it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from django.db import transaction

from billing import access, actions, stripe_api
from billing.models import BillingAccount

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: int  # the HTTP status to answer Stripe
    message: str


def _ids(obj: dict[str, Any]) -> tuple[str, str]:
    """(customer, subscription) of an invoice or a subscription object."""
    if obj.get("object") == "subscription":
        return str(obj.get("customer") or ""), str(obj.get("id") or "")
    subscription = obj.get("subscription") or ""
    parent = obj.get("parent") or {}
    if not subscription and isinstance(parent, dict):  # newer API versions: invoice.parent.subscription_details
        subscription = (parent.get("subscription_details") or {}).get("subscription") or ""
    return str(obj.get("customer") or ""), str(subscription)


def _invoice_paid(account: BillingAccount, obj: dict[str, Any], now: dt.datetime) -> str:
    actions.paid(account, obj, now)
    return f"paid: {account.status}"


def _invoice_failed(account: BillingAccount, obj: dict[str, Any], now: dt.datetime) -> str:
    actions.payment_failed(account, now)
    return "payment failed: past due"


def _subscription_updated(account: BillingAccount, obj: dict[str, Any], now: dt.datetime) -> str:
    changed = actions.apply_subscription(account, obj, now, why="customer.subscription.updated")
    return f"subscription: {', '.join(changed) or 'unchanged'}"


def _subscription_deleted(account: BillingAccount, obj: dict[str, Any], now: dt.datetime) -> str:
    if obj.get("id") and account.stripe_subscription_id and obj["id"] != account.stripe_subscription_id:
        return "an older subscription ended: ignored"
    actions.subscription_ended(account, now)
    return "subscription ended: canceled"


HANDLERS: dict[str, Callable[[BillingAccount, dict[str, Any], dt.datetime], str]] = {
    "invoice.paid": _invoice_paid,
    "invoice.payment_succeeded": _invoice_paid,  # what localstripe (and older Stripe setups) send
    "invoice.payment_failed": _invoice_failed,
    "customer.subscription.created": _subscription_updated,
    "customer.subscription.updated": _subscription_updated,
    "customer.subscription.deleted": _subscription_deleted,
}


def receive(payload: bytes, signature: str, now: dt.datetime) -> Outcome:
    """Verify and handle one webhook request."""
    if not stripe_api.enabled():
        return Outcome(404, "billing is off")
    if not signature:
        return Outcome(400, "missing Stripe-Signature header")
    try:
        event = stripe_api.construct_event(payload, signature)
    except stripe.SignatureVerificationError:
        log.warning("Stripe webhook with a bad or stale signature refused")
        return Outcome(400, "bad signature")
    except ValueError:
        return Outcome(400, "the body is not a Stripe event")
    return handle(event, now)


def handle(event: dict[str, Any], now: dt.datetime) -> Outcome:
    event_id, type_ = str(event.get("id") or ""), str(event.get("type") or "")
    obj = (event.get("data") or {}).get("object") or {}
    if not event_id or not isinstance(obj, dict):
        return Outcome(400, "an event needs an id and data.object")
    with transaction.atomic():
        record = access.claim_event(event_id, type_)
        if record is None:
            return Outcome(200, f"{event_id} was already handled: ignored")
        handler = HANDLERS.get(type_)
        account = access.account_by_stripe(*_ids(obj)) if handler else None
        if handler is None:
            record.outcome = "not a type Archiva handles"
        elif account is None:
            record.outcome = "no billing account has this customer or subscription"
        else:
            record.tenant = account.tenant
            record.outcome = handler(account, obj, now)[:200]
        record.save(update_fields=["tenant", "outcome"])
    log.info("Stripe event %s (%s): %s", event_id, type_, record.outcome)
    return Outcome(200, record.outcome)
