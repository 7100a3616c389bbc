"""Pages for people: the landing page and System Status."""

from __future__ import annotations

from allauth.account.decorators import verified_email_required
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from archive import access as archive_access
from imapjournal import access as imap_access
from tenants import access
from tenants.actions import DEFAULT_ROTATION_GRACE, rotate_journal_token, set_m365_organization
from tenants.models import Membership, User
from web.audit import client_ip
from web.forms import normalize_domain
from web.roles import SignedInRequest, admin_required
from web.setup import setup_checks
from web.status import tenant_status


def landing_page(user: User) -> str:
    """Where a signed-in person starts: owners and admins on System Status
    (the journal address, the setup guide), everyone else on search."""
    try:
        return "status" if access.membership_for(user).is_admin else "search"
    except Http404:
        return "search"


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(landing_page(request.user))
    return render(request, "web/home.html")


@require_GET
@verified_email_required
def status(request: SignedInRequest) -> HttpResponse:
    membership = access.request_member(request)
    # The journal address, its rotation and the setup guide: owners and admins only.
    status = tenant_status(membership.tenant, journal=membership.is_admin, compliance=membership.sees_all_mail)
    ctx = {
        "membership": membership,
        "status": status,
        "checks": setup_checks(membership.tenant, status.region) if membership.is_admin else None,
        # IMAP journaling's errors (server, mailbox): for the admins who can fix them.
        "imap": imap_access.enabled_journal(membership.tenant) if membership.is_admin else None,
        "grace_days": DEFAULT_ROTATION_GRACE.days,
        "scrub_period": settings.ARCHIVA_SCRUB_PERIOD,
        # X-OriginatorOrg values seen in the reports: what the organization check should expect.
        "seen_originators": archive_access.seen_originators(membership.tenant) if membership.is_admin else [],
    }
    return render(request, "web/status.html", ctx)


@require_POST
@admin_required
def rotate_token(request: HttpRequest, membership: Membership) -> HttpResponse:
    """A new journal address; the old one keeps working for the grace period."""
    rotate_journal_token(membership.tenant, actor=membership, ip=client_ip(request))
    messages.success(
        request,
        f"New journal address issued. The previous one keeps working for {DEFAULT_ROTATION_GRACE.days} days: "
        "update your journal rule before then.",
    )
    return redirect("status")


@require_POST
@admin_required
def set_organization(request: HttpRequest, membership: Membership) -> HttpResponse:
    """The Microsoft 365 organization expected in reports' X-OriginatorOrg."""
    value = request.POST.get("m365_organization", "")
    try:
        value = normalize_domain(value) if value.strip() else ""  # a domain name, checked as domains are
    except ValidationError:
        messages.error(request, f"{value.strip()[:100]!r} is not an organization name like contoso.onmicrosoft.com.")
        return redirect("status")
    set_m365_organization(membership.tenant, value, actor=membership, ip=client_ip(request))
    messages.success(request, f"Microsoft 365 organization set to {value}." if value else "Organization check off.")
    return redirect("status")
