"""The JSON API (`/api/v1/…`).

Every API view goes through `api_view`, the one place that decides who a
request acts for.  Today that is the session's user; Bearer API tokens
(a later issue) plug into `api_user` without touching the views.
"""

from __future__ import annotations

from functools import wraps

from allauth.account.utils import has_verified_email
from django.http import Http404, JsonResponse
from django.views.decorators.http import require_GET

from tenants import access
from tenants.models import User
from web.status import as_json, tenant_status


def api_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def api_user(request) -> User | None:
    """The user this request acts for, or None when it is not authenticated."""
    user = request.user
    if user.is_authenticated and has_verified_email(user):
        return user
    return None


def api_view(view):
    """401 JSON without credentials; 404 JSON for anything not the caller's."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        user = api_user(request)
        if user is None:
            return api_error("authentication required", 401)
        try:
            return view(request, user, *args, **kwargs)
        except Http404:
            return api_error("not found", 404)

    return wrapper


@require_GET
@api_view
def status(request, user):
    membership = access.membership_for(user)
    return JsonResponse(as_json(tenant_status(membership.tenant)))
