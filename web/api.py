"""The JSON API (`/api/v1/…`).

Every API view goes through `api_view`, the one place that decides who a
request acts for: the session's user, or the member an
`Authorization: Bearer <API token>` acts as.  A request that presents a
Bearer token is judged by the token alone (a bad token is 401 even with a
session), and acts in the token's tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Concatenate, ParamSpec

from allauth.account.utils import has_verified_email
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from tenants import access
from tenants.api_tokens import touch_api_token
from tenants.models import Membership, User
from web.status import as_json, tenant_status

if TYPE_CHECKING:
    from tenants.models import ApiToken

P = ParamSpec("P")


class ApiRequest(HttpRequest):
    """A request as `api_user` leaves it: for a Bearer token, the membership it acts as and the token."""

    api_membership: Membership
    api_token: ApiToken


def api_error(message: str, status: int) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="archiva"'
    return response


def bearer_secret(request: HttpRequest) -> str | None:
    """The token of an `Authorization: Bearer …` header; "" when the header is malformed."""
    header: str = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


# Where `bearer_membership` keeps what it found (the billing gate asks before the view).
BEARER_MEMBERSHIP = "_archiva_bearer_membership"


def bearer_membership(request: HttpRequest) -> tuple[Membership, ApiToken] | None:
    """Who the request's Bearer token acts for, and the token (`access.membership_for_api_token`);
    None without a token or for a bad one.  Looked up once per request."""
    secret = bearer_secret(request)
    if not secret:
        return None
    if not hasattr(request, BEARER_MEMBERSHIP):
        setattr(request, BEARER_MEMBERSHIP, access.membership_for_api_token(secret))
    found: tuple[Membership, ApiToken] | None = getattr(request, BEARER_MEMBERSHIP)
    return found


def api_user(request: ApiRequest) -> User | None:
    """The user this request acts for, or None when it is not authenticated.

    For a Bearer token it also sets `request.api_membership` and
    `request.api_token` (the token's tenant, for `api_membership` and the audit log).
    """
    if bearer_secret(request) is not None:
        found = bearer_membership(request)
        if found is None:
            return None
        request.api_membership, request.api_token = found
        touch_api_token(request.api_token)
        member: User = request.api_membership.user
        return member
    user = request.user
    if user.is_authenticated and has_verified_email(user):
        return user
    return None


# What a `search:read` token may call: searching and downloading, reading only.
SEARCH_READ_VIEWS = frozenset({"api-messages", "api-message-eml", "api-exports", "api-export", "api-export-download"})


def scope_refusal(request: ApiRequest) -> str | None:
    """Why this request is beyond its Bearer token's scope; None when it is within
    (or comes with a session). The role is checked by each view as for people."""
    token = getattr(request, "api_token", None)
    if token is None or token.scope != token.Scope.SEARCH_READ:
        return None
    match = request.resolver_match
    if match is not None and match.url_name in SEARCH_READ_VIEWS and request.method in ("GET", "HEAD"):
        return None
    return "this token's scope is search:read: it can search and download only; create an admin token for this"


def api_membership(request: HttpRequest) -> Membership:
    """The membership an API request acts in: the token's, or the session
    user's (which the request keeps once found)."""
    membership = getattr(request, "api_membership", None)
    return membership if membership is not None else access.request_member(request)


def api_view(
    view: Callable[Concatenate[ApiRequest, User, P], HttpResponseBase],
) -> Callable[Concatenate[ApiRequest, P], HttpResponseBase]:
    """401 JSON without credentials; 404 JSON for anything not the caller's."""

    @wraps(view)
    def wrapper(request: ApiRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        user = api_user(request)
        if user is None:
            return api_error("authentication required", 401)
        refusal = scope_refusal(request)
        if refusal:
            return api_error(refusal, 403)
        try:
            return view(request, user, *args, **kwargs)
        except Http404:
            return api_error("not found", 404)

    return wrapper


def csrf_refusal(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF check, for a session-authenticated API request; None when it passes."""
    checker = CsrfViewMiddleware(lambda _request: HttpResponse())
    checker.process_request(request)
    return checker.process_view(request, lambda _request: HttpResponse(), (), {})


def api_write_view(
    view: Callable[Concatenate[ApiRequest, User, P], HttpResponseBase],
) -> Callable[Concatenate[ApiRequest, P], HttpResponseBase]:
    """`api_view` for views that change things: a Bearer token needs no CSRF token
    (no browser sends it on its own), a session still does (403 JSON without)."""

    @wraps(view)
    def checked(request: ApiRequest, user: User, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        if request.method not in ("GET", "HEAD", "OPTIONS") and bearer_secret(request) is None:
            refused = csrf_refusal(request)
            if refused is not None:
                return api_error("CSRF check failed: send the csrftoken cookie's value as X-CSRFToken", 403)
        return view(request, user, *args, **kwargs)

    exempt: Callable[Concatenate[ApiRequest, P], HttpResponseBase] = csrf_exempt(api_view(checked))
    return exempt


@require_GET
@api_view
def status(request: HttpRequest, user: User) -> HttpResponse:
    membership = api_membership(request)
    status = tenant_status(membership.tenant, journal=membership.is_admin, compliance=membership.sees_all_mail)
    return JsonResponse(as_json(status))
