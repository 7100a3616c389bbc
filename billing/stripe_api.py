"""Archiva's calls to Stripe, in one place, answering plain dicts.

Billing is on when `STRIPE_SECRET_KEY` is set; `ARCHIVA_STRIPE_API_BASE`
points the client at another Stripe-compatible server (tests: localstripe).
No card data passes through here: a payment method is made by Stripe.js in
the browser (or is one of Stripe's test payment methods in test mode) and
arrives as its id.  Subscriptions use plans (`items[].plan`), which both
Stripe and localstripe take; the quantity is prorated as Stripe does by default.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

import stripe
from django.conf import settings

log = logging.getLogger(__name__)

PAYMENT_METHOD_RE = re.compile(r"pm_[A-Za-z0-9_]{1,200}")
# Stripe's own test payment methods (https://docs.stripe.com/testing), taken in test mode only.
TEST_PAYMENT_METHODS = {
    "pm_card_visa": "Visa ending 4242 (payments succeed)",
    "pm_card_chargeCustomerFail": "Visa ending 0341 (attaches; every payment fails)",
    "pm_card_visa_chargeDeclined": "Visa ending 0002 (declined)",
}


class BillingError(Exception):
    """Stripe refused or could not be reached: the message can be shown to the owner."""


def enabled() -> bool:
    """Billing is on: a Stripe secret key is configured (unset: everything is free)."""
    return bool(settings.STRIPE_SECRET_KEY)


def test_mode() -> bool:
    return str(settings.STRIPE_SECRET_KEY).startswith("sk_test_")


def client() -> stripe.StripeClient:
    bases: Any = {"api": settings.ARCHIVA_STRIPE_API_BASE} if settings.ARCHIVA_STRIPE_API_BASE else None
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses=bases, max_network_retries=2)


def _plain(obj: Any) -> dict[str, Any]:
    plain: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return plain


def _call(what: str, function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return _plain(function(*args, **kwargs))
    except stripe.CardError as error:
        raise BillingError(f"The card was declined: {error.user_message or error}") from error
    except stripe.StripeError as error:
        log.warning("Stripe refused %s: %s", what, error)
        message = getattr(error, "user_message", None) or str(error) or type(error).__name__
        raise BillingError(f"Stripe could not {what}: {message}") from error


def timestamp(value: Any) -> dt.datetime | None:
    """A Stripe Unix time as an aware datetime (None for null)."""
    if value in (None, ""):
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)


def ensure_plan(code: str, name: str, currency: str, interval: str, unit_amount: int) -> None:
    """The plan exists on Stripe under our code (created on first use from the table's row)."""
    plans = client().v1.plans
    try:
        plans.retrieve(code)
        return
    except stripe.InvalidRequestError as error:
        if error.http_status != 404:
            raise BillingError(f"Stripe could not find plan {code}: {error}") from error
    _call(
        "create the plan",
        plans.create,
        params={
            "id": code,
            "amount": unit_amount,
            "currency": currency,
            "interval": interval,
            "product": {"name": name},
        },
    )


def create_customer(email: str, tenant_name: str, tenant_ref: str) -> str:
    found = _call(
        "create the customer",
        client().v1.customers.create,
        params={"email": email, "name": tenant_name, "metadata": {"archiva_tenant": tenant_ref}},
    )
    return str(found["id"])


def set_customer_email(customer: str, email: str) -> None:
    _call("change the billing email", client().v1.customers.update, customer, params={"email": email})


def attach_default_payment_method(customer: str, payment_method: str) -> str:
    """Attach the payment method and make it the customer's default for invoices; its id."""
    attached = _call(
        "attach the payment method", client().v1.payment_methods.attach, payment_method, params={"customer": customer}
    )
    method = str(attached["id"])
    _call(
        "set the default payment method",
        client().v1.customers.update,
        customer,
        params={"invoice_settings": {"default_payment_method": method}},
    )
    return method


def create_subscription(customer: str, plan: str, quantity: int, trial_end: dt.datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {"customer": customer, "items": [{"plan": plan, "quantity": quantity}]}
    if trial_end is not None:
        params["trial_end"] = int(trial_end.timestamp())
    return _call("create the subscription", client().v1.subscriptions.create, params=params)


def set_quantity(subscription: str, item: str, quantity: int) -> dict[str, Any]:
    """Change the subscription's quantity; Stripe prorates it (its default)."""
    return _call(
        "change the quantity",
        client().v1.subscriptions.update,
        subscription,
        params={"items": [{"id": item, "quantity": quantity}]},
    )


def set_cancel_at_period_end(subscription: str, cancel: bool) -> dict[str, Any]:
    return _call(
        "cancel" if cancel else "resume the subscription",
        client().v1.subscriptions.update,
        subscription,
        params={"cancel_at_period_end": cancel},
    )


def invoices(customer: str, limit: int = 24) -> list[dict[str, Any]]:
    listed = _call("list the invoices", client().v1.invoices.list, params={"customer": customer, "limit": limit})
    return list(listed.get("data", []))


def upcoming_invoice(customer: str, subscription: str) -> dict[str, Any] | None:
    """The next invoice as Stripe previews it; None when there is none (e.g. a subscription ending)."""
    try:
        return _plain(client().v1.invoices.create_preview(params={"customer": customer, "subscription": subscription}))
    except stripe.StripeError as error:
        log.info("no upcoming invoice for %s: %s", subscription, error)
        return None


def construct_event(payload: bytes, signature: str) -> dict[str, Any]:
    """The verified event; raises ValueError (bad JSON) or SignatureVerificationError."""
    event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    return _plain(event)


def subscription_item(subscription: dict[str, Any]) -> dict[str, Any]:
    items = subscription.get("items", {}).get("data", [])
    return items[0] if items else {}


def period_end(subscription: dict[str, Any]) -> dt.datetime | None:
    """The current period's end: on the subscription (older API versions, localstripe) or its item (newer)."""
    value = subscription.get("current_period_end") or subscription_item(subscription).get("current_period_end")
    return timestamp(value)
