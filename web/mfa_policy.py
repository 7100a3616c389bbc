"""The owner's two-factor policy (`/settings/mfa/`): require a second factor
of members who sign in with a password, and see who has one."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from signin.mfa import (
    PolicyRefused,
    has_second_factor,
    set_require_mfa,
    signed_in_with_password,
    users_with_second_factor,
)
from tenants import access
from tenants.models import Membership, Role
from web.audit import client_ip
from web.roles import SignedInRequest, member_required


@never_cache
@require_http_methods(["GET", "POST"])
@member_required
def mfa_policy(request: SignedInRequest, membership: Membership) -> HttpResponse:
    if membership.role != Role.OWNER:
        raise PermissionDenied("owners only")
    if request.method == "POST":
        return change_policy(request, membership)
    members = list(access.members(membership.tenant))
    enrolled = users_with_second_factor(m.user_id for m in members)
    rows = [
        {"membership": m, "enrolled": m.user_id in enrolled, "password": m.user.has_usable_password()} for m in members
    ]
    ctx = {"membership": membership, "tenant": membership.tenant, "rows": rows}
    return render(request, "web/mfa_policy.html", ctx)


def change_policy(request: SignedInRequest, membership: Membership) -> HttpResponse:
    required = request.POST.get("require_mfa") == "on"
    if required and signed_in_with_password(request) and not has_second_factor(request.user):
        # The owner would be the first one locked into enrolment: enrol first.
        messages.error(request, "Set up two-factor authentication for your own account first, then require it.")
        return redirect("mfa-policy")
    try:
        changed = set_require_mfa(membership, required, ip=client_ip(request))
    except PolicyRefused as refused:
        raise PermissionDenied(str(refused)) from None
    if changed:
        messages.success(
            request,
            "Two-factor authentication is now required for password sign-in."
            if required
            else "Two-factor authentication is no longer required.",
        )
    return redirect("mfa-policy")
