"""Legal holds: the page `/holds/` and `/api/v1/holds`.

Owners and admins place and release holds.  Auditors read them (they are
the eDiscovery role: they search and export all mail, and need to know what
is preserved and why) but change nothing.  Plain users get 403: a legal
matter, and whose mail it names, is not theirs to see, not even on the
pages of their own messages.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from compliance import holds as legal_holds
from compliance.holds import Hold, HoldError
from tenants import access
from tenants.models import Membership, User
from web.api import ApiRequest, api_error, api_membership, api_write_view
from web.audit import client_ip
from web.roles import SignedInRequest, admin_required, member_required


class HoldForm(forms.Form):
    name = forms.CharField(label="Name", max_length=200, help_text="E.g. “Contoso v. Fabrikam”.")
    reason = forms.CharField(label="Reason", widget=forms.Textarea(attrs={"rows": 2}))
    query = forms.CharField(
        label="Query", required=False, max_length=2000, help_text="A search query; empty: all the custodians' mail."
    )
    custodians = forms.CharField(
        label="Custodians",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="Mailbox addresses, separated by commas or lines; empty: everyone's mail the query matches.",
    )
    owner = forms.EmailField(label="Owner", required=False, help_text="The member who answers for it; empty: you.")


def _owner(membership: Membership, email: object) -> Membership | None:
    """The member named as the hold's owner (None: the creator); HoldError if no member has that address."""
    if not email:
        return None
    if not isinstance(email, str):
        raise HoldError("The owner is a member's address.")
    for member in access.members(membership.tenant):
        if member.user.email.lower() == email.strip().lower():
            return member
    raise HoldError(f"No member of this organization has the address {email[:80]}.")


def _create(membership: Membership, data: dict[str, Any], request: Any) -> Hold:
    return legal_holds.create_hold(
        membership,
        name=data.get("name") or "",
        reason=data.get("reason") or "",
        query=data.get("query") or "",
        custodians=data.get("custodians") or [],
        owner=_owner(membership, data.get("owner")),
        ip=client_ip(request),
        token=getattr(request, "api_token", None),
    )


def _require_reader(membership: Membership) -> None:
    if not membership.sees_all_mail:
        raise PermissionDenied("owners, admins and auditors only")


# --- the page ----------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "POST"])
@member_required
def holds_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    _require_reader(membership)
    form = HoldForm(request.POST or None) if membership.is_admin else None
    if request.method == "POST":
        if form is None:
            raise PermissionDenied("owners and admins only")
        if form.is_valid():
            try:
                hold = _create(membership, form.cleaned_data, request)
                messages.success(request, f"Hold “{hold.name}” placed: what it covers is never deleted.")
                return redirect("holds")
            except HoldError as exc:
                form.add_error(None, str(exc))
    ctx = {"membership": membership, "form": form, "holds": legal_holds.holds(membership.tenant)}
    return render(request, "web/holds.html", ctx)


@require_POST
@admin_required
def release(request: SignedInRequest, membership: Membership, hold_id: int) -> HttpResponse:
    try:
        hold = legal_holds.hold_for(membership.tenant, hold_id)
    except Hold.DoesNotExist:
        raise Http404("no such hold") from None
    try:
        legal_holds.release_hold(membership, hold, ip=client_ip(request))
        messages.success(request, f"Hold “{hold.name}” released.")
    except HoldError as exc:
        messages.error(request, str(exc))
    return redirect("holds")


# --- the API -----------------------------------------------------------------------


@api_write_view
def api_holds(request: ApiRequest, user: User) -> HttpResponseBase:
    """GET: every hold (owners, admins, auditors).  POST {"name", "reason", "query",
    "custodians", "owner"}: place one (owners, admins), 201."""
    membership = api_membership(request)
    if not membership.sees_all_mail:
        return api_error("owners, admins and auditors only", 403)
    if request.method == "GET":
        return JsonResponse({"holds": [legal_holds.hold_json(h) for h in legal_holds.holds(membership.tenant)]})
    if request.method != "POST":
        return api_error("use GET or POST", 405)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return api_error("the body is not JSON", 400)
    if not isinstance(body, dict):
        return api_error("the body must be a JSON object", 400)
    try:
        hold = _create(membership, body, request)
    except HoldError as exc:
        return api_error(str(exc), 400)
    return JsonResponse(legal_holds.hold_json(hold), status=201)


@api_write_view
def api_hold(request: ApiRequest, user: User, hold_id: int, action: str = "") -> HttpResponseBase:
    """GET /api/v1/holds/<id>; POST /api/v1/holds/<id>/release (owners, admins)."""
    membership = api_membership(request)
    if not membership.sees_all_mail:
        return api_error("owners, admins and auditors only", 403)
    try:
        hold = legal_holds.hold_for(membership.tenant, hold_id)
    except Hold.DoesNotExist:
        return api_error("not found", 404)
    if not action:
        if request.method != "GET":
            return api_error("use GET", 405)
        return JsonResponse(legal_holds.hold_json(hold))
    if request.method != "POST":
        return api_error("use POST", 405)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    try:
        hold = legal_holds.release_hold(
            membership, hold, ip=client_ip(request), token=getattr(request, "api_token", None)
        )
    except HoldError as exc:
        return api_error(str(exc), 409)
    return JsonResponse(legal_holds.hold_json(hold))
