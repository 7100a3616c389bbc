"""The audit log: writing an entry for every search, view and download, and
the page where a tenant's admins read it (`/audit/`)."""

from __future__ import annotations

from typing import Any

from allauth.account.decorators import verified_email_required
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from tenants import access
from tenants.audit import record_event
from tenants.models import Membership
from web.roles import SignedInRequest

PAGE_SIZE = 50


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address; behind our proxy (ARCHIVA_BEHIND_PROXY), the address the proxy saw."""
    if settings.ARCHIVA_BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            # The proxy appends the peer it saw; anything before it is the client's say-so.
            return forwarded.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def audit(request: HttpRequest, membership: Membership, action: str, **detail: Any) -> None:
    """Record what this request did, by whom, from where, and through which API token."""
    record_event(membership, action, detail, ip=client_ip(request), token=getattr(request, "api_token", None))


def require_admin(membership: Membership) -> None:
    """Owners and admins only; an auditor or plain user of the tenant gets 403."""
    if not membership.is_admin:
        raise PermissionDenied("admins only")


def require_auditor(membership: Membership) -> None:
    """Owners, admins and auditors; a plain user gets 403."""
    if not membership.sees_all_mail:
        raise PermissionDenied("admins and auditors only")


@require_GET
@verified_email_required
def audit_log(request: SignedInRequest) -> HttpResponse:
    """The tenant's audit log, for its admins and auditors (reading it is not itself an event)."""
    membership = access.membership_for(request.user)
    require_auditor(membership)
    page = Paginator(access.audit_events(membership.tenant), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "web/audit.html", {"membership": membership, "page": page})
