"""The tenant's MFA policy for password sign-in, and who must enrol.

A tenant may require a second factor of members who sign in with a
password (`Tenant.require_mfa`).  `RequireMFAMiddleware` sends such a member
without an authenticator to the enrolment page until they have one.  It
never applies to sessions signed in with Microsoft (the Entra sign-in marks
them with `SIGNIN_METHOD_KEY`; Entra ID enforces its own MFA) nor to
accounts without a usable password (created by that sign-in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from allauth.mfa.models import Authenticator
from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from tenants import access
from tenants.audit import record_event
from tenants.models import AuditEvent, Membership, Role, Tenant, User

# Set by the Entra sign-in in the session of a person it signed in.
SIGNIN_METHOD_KEY = "archiva_signin_method"
MICROSOFT = "microsoft"
# Authenticators that are a second factor by themselves (recovery codes are a fallback).
FACTOR_TYPES = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)
ENROL_MESSAGE = (
    "Your organization requires two-factor authentication for password sign-in. "
    "Set up an authenticator app to continue."
)


class PolicyRefused(Exception):
    """A policy change the rules forbid; the message is written for the person who asked."""


def has_second_factor(user: User) -> bool:
    return bool(Authenticator.objects.filter(user_id=user.pk, type__in=FACTOR_TYPES).exists())


def users_with_second_factor(user_ids: Iterable[int]) -> set[int]:
    """Which of these users have a second factor (for the policy page's list)."""
    found = Authenticator.objects.filter(user_id__in=list(user_ids), type__in=FACTOR_TYPES)
    return set(found.values_list("user_id", flat=True))


def signed_in_with_password(request: HttpRequest) -> bool:
    """Whether the policy applies to this session: not a Microsoft sign-in,
    and an account that has a password at all."""
    if request.session.get(SIGNIN_METHOD_KEY) == MICROSOFT:
        return False
    user = request.user
    return bool(user.is_authenticated and user.has_usable_password())


def must_enrol(request: HttpRequest) -> bool:
    """The session's user is a member of a tenant that requires MFA, signed
    in with a password, and has no second factor."""
    if not signed_in_with_password(request):
        return False
    membership = access.request_membership(request)
    if membership is None:
        return False
    return membership.tenant.require_mfa and not has_second_factor(membership.user)


def set_require_mfa(actor: Membership, required: bool, *, ip: str | None = None) -> bool:
    """Turn the tenant's requirement on or off (owners only); audited.  False if nothing changed."""
    if actor.role != Role.OWNER:
        raise PolicyRefused("Only an owner can change the two-factor requirement.")
    tenant: Tenant = actor.tenant
    if tenant.require_mfa == required:
        return False
    with transaction.atomic():
        tenant.require_mfa = required
        tenant.save(update_fields=["require_mfa"])
        record_event(
            actor,
            AuditEvent.Action.SETTING_CHANGED,
            {"old": not required, "new": required},
            ip=ip,
            target="require_mfa",
        )
    return True


def record_authenticator_change(user: User, action: str, kind: str, ip: str | None) -> None:
    """A member added or removed a second factor: their tenant's admins see it in the audit log."""
    try:
        membership = access.membership_for(user)
    except Http404:
        return  # an account of no tenant has no audit log
    record_event(membership, action, {"type": kind}, ip=ip, target=user.email)


# --- the middleware -------------------------------------------------------------


@cache
def exempt_prefixes() -> tuple[str, ...]:
    """Where a member who must enrol may still go: enrolment itself (with the
    reauthentication it may ask for), signing out, static files, health."""
    return (
        reverse("mfa_index"),
        reverse("account_logout"),
        reverse("account_reauthenticate"),
        settings.STATIC_URL,
        "/healthz",
        "/readyz",
    )


class RequireMFAMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(exempt_prefixes()) or not must_enrol(request):
            return self.get_response(request)
        if request.path.startswith("/api/"):
            return JsonResponse({"error": ENROL_MESSAGE, "enrol_url": reverse("mfa_activate_totp")}, status=403)
        messages.warning(request, ENROL_MESSAGE)
        return redirect("mfa_activate_totp")
