"""What billing changes on the web side: the admins' banner, and read-only mode after the grace.

Never the ingest: journal reports go to the SMTP ingest and /o365 (Graph
notifications) whatever the standing, and neither passes through this gate
in a way that refuses anything.  With billing off (no STRIPE_SECRET_KEY)
nothing here does anything.

Read-only (`billing.standing`): search, reading mail and export still work,
every other change is refused (402 for the API; pages send owners and
admins back to /billing/ with a message, and tell others with a 402 page).
Closed (30 days after a cancellation): reading mail and exports are refused
too; billing, status, audit and account pages stay open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from billing import access as billing_access
from billing import stripe_api
from billing.models import BillingAccount
from billing.standing import FREE, Standing, standing_of
from tenants import access
from tenants.models import Membership, Tenant
from web.api import bearer_membership, bearer_secret

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Always open: billing itself, Stripe's and Microsoft's webhooks, health checks.
ALWAYS_OPEN = {
    "billing",
    "billing-subscribe",
    "billing-cancel",
    "billing-resume",
    "billing-email",
    "api-billing",
    "stripe-webhook",
    "o365",
    "healthz",
    "readyz",
}
# Changes read-only mode still allows: starting an export, and taking access away
# (a leaked journal address or API token, a member who left): security never waits for a payment.
READ_ONLY_WRITES = {
    "export-new",
    "api-exports",
    "rotate-token",
    "token-revoke",
    "team-remove",
    "team-invitation-revoke",
}
# What a closed archive refuses even to read.
MAIL_READING = {
    "search",
    "api-messages",
    "message",
    "message-attachment",
    "api-message-eml",
    "exports",
    "export-new",
    "export-download",
    "api-exports",
    "api-export",
    "api-export-download",
}


# Where `request_account` keeps the billing account it found.
REQUEST_ACCOUNT = "_archiva_billing_account"


def request_account(request: HttpRequest, tenant: Tenant) -> BillingAccount:
    """The tenant's billing account, looked up once per request: the gate,
    the banner and the billing views all ask."""
    kept: BillingAccount | None = getattr(request, REQUEST_ACCOUNT, None)
    if kept is None or kept.tenant_id != tenant.pk:
        kept = billing_access.account(tenant)
        setattr(request, REQUEST_ACCOUNT, kept)
    return kept


def standing_for(request: HttpRequest, membership: Membership) -> Standing:
    if not stripe_api.enabled():
        return FREE
    return standing_of(request_account(request, membership.tenant), timezone.now())


def _membership(request: HttpRequest) -> Membership | None:
    """The member the request acts as: its Bearer token's, or the signed-in user's."""
    if bearer_secret(request) is not None:
        found = bearer_membership(request)
        return found[0] if found else None
    return access.request_membership(request)


def refusal(request: HttpRequest, standing: Standing, *, admin: bool = True) -> HttpResponseBase | None:
    """The response refusing this request for `standing`, or None when it may go on."""
    match = request.resolver_match
    name = match.url_name if match else None
    if not standing.read_only or name in ALWAYS_OPEN or request.path.startswith("/accounts/"):
        return None
    allowed = request.method in SAFE_METHODS or name in READ_ONLY_WRITES
    if allowed and not (standing.closed and name in MAIL_READING):
        return None
    if request.path.startswith("/api/"):
        return JsonResponse({"error": standing.notice, "billing": standing.status}, status=402)
    if not admin:  # /billing/ is for owners and admins: tell the others here
        return render(request, "web/billing_refused.html", {"standing": standing}, status=402)
    messages.error(request, standing.notice)
    return redirect("billing")


class BillingGateMiddleware:
    """Refuses what read-only or closed mode does not allow (after URL resolution: `process_view`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Any, args: Any, kwargs: Any) -> HttpResponseBase | None:
        if not stripe_api.enabled() or request.path.startswith(("/static/", "/accounts/")):
            return None
        match = request.resolver_match
        if match is not None and match.url_name in ALWAYS_OPEN:
            return None
        membership = _membership(request)
        if membership is None:
            return None
        return refusal(request, standing_for(request, membership), admin=membership.is_admin)


def banner(request: HttpRequest) -> dict[str, Any]:
    """For templates: whether billing is on, and (for owners and admins) the standing's notice."""
    if not stripe_api.enabled():
        return {"billing_on": False}

    def admin_standing() -> Standing | None:
        membership = _membership(request)
        if membership is None or not membership.is_admin:
            return None
        return standing_for(request, membership)

    return {"billing_on": True, "billing_standing": SimpleLazyObject(admin_standing)}
