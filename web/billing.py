"""Billing (`/billing/`, `GET /api/v1/billing`, `POST /stripe/webhook`).

Owners and admins see the plan, the trial, the mailbox count with the list
behind it, the invoices and the next one; owners subscribe, cancel,
resume and change the billing email.  Card details go from the browser to
Stripe (Stripe.js Card Element); in test mode Stripe's test payment
methods can stand in.  With billing off the page says everything is free.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import access as billing_access
from billing import actions, stripe_api, webhooks
from billing import mailboxes as mailbox_count
from billing.models import BillingAccount, Plan
from tenants.models import Membership, Role, User
from web.api import api_error, api_membership, api_view
from web.audit import client_ip
from web.billing_gate import request_account, standing_for
from web.csp import csp_override
from web.roles import SignedInRequest, admin_required

STRIPE_JS = "https://js.stripe.com/v3/"


class SubscribeForm(forms.Form):
    interval = forms.ChoiceField(choices=Plan.Interval.choices, initial=Plan.Interval.MONTH, label="Billed every")
    payment_method = forms.CharField(max_length=255, required=False, widget=forms.HiddenInput)
    test_payment_method = forms.ChoiceField(
        choices=list(stripe_api.TEST_PAYMENT_METHODS.items()), required=False, label="Test card"
    )

    def chosen_method(self) -> str:
        return str(self.cleaned_data.get("payment_method") or self.cleaned_data.get("test_payment_method") or "")


class BillingEmailForm(forms.Form):
    email = forms.EmailField(label="Billing email", help_text="Stripe sends invoices and receipts here.")


def _money(cents: int | None, currency: str) -> str:
    amount = f"{(cents or 0) / 100:.2f}"
    return {"usd": f"${amount}", "eur": f"{amount} €"}.get(currency.lower(), f"{amount} {currency.upper()}")


def _invoice_row(invoice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": invoice.get("id", ""),
        "number": invoice.get("number") or invoice.get("id", ""),
        "date": stripe_api.timestamp(invoice.get("created") or invoice.get("date")),
        "amount": _money(invoice.get("amount_due") or invoice.get("total"), invoice.get("currency") or "usd"),
        "status": invoice.get("status", ""),
        "pdf": invoice.get("invoice_pdf") or "",
        "page": invoice.get("hosted_invoice_url") or "",
    }


def _next_invoice(account: BillingAccount) -> dict[str, Any] | None:
    if not (account.stripe_customer_id and account.stripe_subscription_id) or account.cancel_at_period_end:
        return None
    upcoming = stripe_api.upcoming_invoice(account.stripe_customer_id, account.stripe_subscription_id)
    if upcoming is None:
        return None
    when = stripe_api.timestamp(upcoming.get("next_payment_attempt") or upcoming.get("period_end"))
    currency = str(upcoming.get("currency") or account.plan.currency)
    return {
        "amount_due": int(upcoming.get("amount_due") or 0),
        "currency": currency,
        "amount": _money(upcoming.get("amount_due"), currency),
        "date": when,
    }


def _invoices(account: BillingAccount) -> tuple[list[dict[str, Any]], str]:
    if not account.stripe_customer_id:
        return [], ""
    try:
        return [_invoice_row(i) for i in stripe_api.invoices(account.stripe_customer_id)], ""
    except stripe_api.BillingError as error:
        return [], str(error)


@never_cache
@require_GET
@admin_required
@csp_override(
    script_src=["'self'", "https://js.stripe.com"],
    frame_src=["https://js.stripe.com"],
    connect_src=["'self'", "https://api.stripe.com"],
)
def billing_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    if not stripe_api.enabled():
        return render(request, "web/billing.html", {"membership": membership, "billing_off": True})
    now = timezone.now()
    account = request_account(request, membership.tenant)
    counted = mailbox_count.count(membership.tenant, now)
    invoices, invoice_error = _invoices(account)
    context = {
        "membership": membership,
        "is_owner": membership.role == Role.OWNER,
        "account": account,
        "standing": standing_for(request, membership),
        "plans": billing_access.plans(membership.tenant.region),
        "mailboxes": counted.mailboxes,
        "mailboxes_source": counted.source,
        "window_days": mailbox_count.WINDOW.days,
        "invoices": invoices,
        "invoice_error": invoice_error,
        "next_invoice": _next_invoice(account),
        "subscribe_form": SubscribeForm(),
        "email_form": BillingEmailForm(initial={"email": account.billing_email or membership.user.email}),
        "can_subscribe": not account.stripe_subscription_id or account.status == "canceled",
        "test_mode": stripe_api.test_mode(),
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "stripe_js": STRIPE_JS if settings.STRIPE_PUBLISHABLE_KEY and not settings.ARCHIVA_STRIPE_API_BASE else "",
    }
    return render(request, "web/billing.html", context)


def _owner_action(request: SignedInRequest, membership: Membership, run: Any, done: str) -> HttpResponse:
    if not stripe_api.enabled():
        messages.error(request, "Billing is off on this server: everything is free.")
        return redirect("billing")
    if membership.role != Role.OWNER:
        raise PermissionDenied("only an owner can change billing")
    try:
        run()
    except actions.BillingRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, done)
    return redirect("billing")


@require_POST
@admin_required
def subscribe(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = SubscribeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose how often to be billed, and a payment method.")
        return redirect("billing")
    method, interval = form.chosen_method(), form.cleaned_data["interval"]
    return _owner_action(
        request,
        membership,
        lambda: actions.subscribe(membership, method, interval, ip=client_ip(request), now=timezone.now()),
        "Subscribed. Thank you! The quantity follows your mailbox count, checked daily.",
    )


@require_POST
@admin_required
def cancel(request: SignedInRequest, membership: Membership) -> HttpResponse:
    return _owner_action(
        request,
        membership,
        lambda: actions.cancel(membership, ip=client_ip(request), now=timezone.now()),
        "Canceled at the end of the paid period. You can resume until then.",
    )


@require_POST
@admin_required
def resume(request: SignedInRequest, membership: Membership) -> HttpResponse:
    return _owner_action(
        request,
        membership,
        lambda: actions.resume(membership, ip=client_ip(request), now=timezone.now()),
        "Subscription resumed.",
    )


@require_http_methods(["POST"])
@admin_required
def billing_email(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = BillingEmailForm(request.POST)
    email = str(form.cleaned_data["email"] if form.is_valid() else request.POST.get("email", "")).strip().lower()
    return _owner_action(
        request,
        membership,
        lambda: actions.change_billing_email(membership, email, ip=client_ip(request)),
        f"Invoices now go to {email}.",
    )


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def billing_json(request: HttpRequest, membership: Membership) -> dict[str, Any]:
    """`GET /api/v1/billing`: {"plan", "status", "trial_ends", "mailboxes", "next_invoice"} and the access it allows."""
    now = timezone.now()
    count = len(mailbox_count.count(membership.tenant, now))
    if not stripe_api.enabled():
        return {
            "plan": None,
            "status": "free",
            "trial_ends": None,
            "mailboxes": count,
            "next_invoice": None,
            "access": "full",
        }
    account = request_account(request, membership.tenant)
    standing = standing_for(request, membership)
    plan = account.plan
    upcoming = _next_invoice(account)
    return {
        "plan": {
            "code": plan.code,
            "name": plan.name,
            "currency": plan.currency,
            "interval": plan.interval,
            "unit_amount": plan.unit_amount,
        },
        "status": account.status,
        "trial_ends": _iso(account.trial_ends),
        "mailboxes": count,
        "quantity": account.quantity,
        "next_invoice": (
            {"amount_due": upcoming["amount_due"], "currency": upcoming["currency"], "date": _iso(upcoming["date"])}
            if upcoming
            else None
        ),
        "access": standing.access,
        "notice": standing.notice,
    }


@require_GET
@api_view
def api_billing(request: HttpRequest, user: User) -> HttpResponse:
    membership = api_membership(request)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    return JsonResponse(billing_json(request, membership))


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's events: signature verified, each handled once (billing.webhooks)."""
    outcome = webhooks.receive(request.body, request.META.get("HTTP_STRIPE_SIGNATURE", ""), timezone.now())
    return JsonResponse({"received": outcome.status == 200, "message": outcome.message}, status=outcome.status)
