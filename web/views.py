"""Pages for people: the landing page and System Status."""

from __future__ import annotations

from allauth.account.decorators import verified_email_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from tenants import access
from web.status import tenant_status


@require_GET
def home(request):
    if request.user.is_authenticated:
        return redirect("status")
    return render(request, "web/home.html")


@require_GET
@verified_email_required
def status(request):
    membership = access.membership_for(request.user)
    ctx = {"membership": membership, "status": tenant_status(membership.tenant)}
    return render(request, "web/status.html", ctx)
