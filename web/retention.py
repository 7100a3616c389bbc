"""Retention: the page `/settings/retention/` and `GET/PUT /api/v1/retention`.

Owners and admins only (auditors and plain users get 403: retention is a
setting).  A policy is previewed before it is saved; saving one that may
delete sooner waits for a second owner's or admin's approval and then
ARCHIVA_RETENTION_DELAY (compliance.retention, which audits every step).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from compliance import purge, retention
from compliance.retention import Policy, RetentionChange, RetentionError
from search import SearchUnavailable
from tenants.models import Membership, User
from web.api import ApiRequest, api_error, api_membership, api_write_view
from web.audit import client_ip
from web.roles import SignedInRequest, admin_required


def preview_json(outcome: purge.Outcome, policy: Policy) -> dict[str, Any]:
    rows = [
        {
            "rule": n,
            "query": rule.query,
            "period": str(rule.period),
            "would_delete": outcome.by_rule.get(f"rule {n}", 0),
        }
        for n, rule in enumerate(policy.rules, 1)
    ]
    rows.append(
        {
            "rule": "default",
            "query": "",
            "period": str(policy.default),
            "would_delete": outcome.by_rule.get("default", 0),
        }
    )
    return {"rules": rows, "would_delete": outcome.deleted, "held": outcome.held, "waiting": outcome.waiting}


def policy_document(membership: Membership) -> dict[str, Any]:
    tenant = membership.tenant
    policy = retention.policy_in_force(tenant)
    return {
        **policy.as_json(),
        "pending": [retention.change_json(c) for c in retention.changes_waiting(tenant)],
        "approval_delay_seconds": settings.ARCHIVA_RETENTION_DELAY,
    }


# --- the page ----------------------------------------------------------------------


class PolicyForm(forms.Form):
    default_period = forms.CharField(
        label="Default period",
        max_length=16,
        help_text="Kept this long unless a rule says otherwise: 30d, 6m, 7y or forever.",
    )
    rules = forms.CharField(
        label="Rules",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="One per line, a period then a search query: “10y from:hr@contoso.com”, “30d folder:Junk”. "
        "The first rule whose query matches a message sets its period.",
    )

    def policy(self) -> Policy:
        rules = []
        for n, line in enumerate(self.cleaned_data["rules"].splitlines(), 1):
            if line.strip():
                period, _, query = line.strip().partition(" ")
                if not query.strip():
                    raise RetentionError(f"Rule {n}: write a period, a space, then a query.")
                rules.append({"query": query.strip(), "period": period})
        return retention.read_policy(self.cleaned_data["default_period"], rules)


def _form_initial(policy: Policy) -> dict[str, str]:
    return {
        "default_period": str(policy.default),
        "rules": "\n".join(f"{rule.period} {rule.query}" for rule in policy.rules),
    }


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def retention_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    tenant = membership.tenant
    in_force = retention.policy_in_force(tenant)
    form = PolicyForm(request.POST or None, initial=_form_initial(in_force))
    preview = None
    if request.method == "POST" and form.is_valid():
        try:
            policy = form.policy()
            if request.POST.get("action") == "save":
                change = retention.propose(membership, policy, ip=client_ip(request))
                if change.state == RetentionChange.State.APPLIED:
                    messages.success(request, "Retention saved: it keeps mail at least as long, so it is in force now.")
                else:
                    messages.success(request, "Retention change proposed: another owner or admin must approve it.")
                return redirect("retention")
            preview = preview_json(purge.preview(tenant, policy), policy)
        except RetentionError as exc:
            form.add_error(None, str(exc))
        except SearchUnavailable:
            form.add_error(None, "Search is not answering, so no preview can be made now; try again shortly.")
    ctx = {
        "membership": membership,
        "form": form,
        "policy": in_force,
        "preview": preview,
        "waiting": retention.changes_waiting(tenant),
        "recent": retention.recent_changes(tenant),
        "delay_days": settings.ARCHIVA_RETENTION_DELAY / 86400,
    }
    return render(request, "web/retention.html", ctx)


@require_POST
@admin_required
def change_action(request: SignedInRequest, membership: Membership, change_id: int, action: str) -> HttpResponse:
    try:
        change = retention.change_for(membership.tenant, change_id)
    except RetentionChange.DoesNotExist:
        raise Http404("no such change") from None
    try:
        if action == "approve":
            change = retention.approve(membership, change, ip=client_ip(request))
            messages.success(request, f"Approved: in force from {change.effective_at:%d %b %Y %H:%M} UTC.")
        else:
            retention.cancel(membership, change, ip=client_ip(request))
            messages.success(request, "Change cancelled.")
    except RetentionError as exc:
        messages.error(request, str(exc))
    return redirect("retention")


# --- the API -----------------------------------------------------------------------


def _admin_or_error(request: ApiRequest, user: User) -> Membership | JsonResponse:
    membership = api_membership(request)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    return membership


@api_write_view
def api_retention(request: ApiRequest, user: User) -> HttpResponseBase:
    """GET: the policy in force and the changes waiting.  PUT {"default_period", "rules"}:
    propose it (200 in force at once, 202 waiting for approval); with "preview": true, only count."""
    membership = _admin_or_error(request, user)
    if isinstance(membership, JsonResponse):
        return membership
    if request.method == "GET":
        return JsonResponse(policy_document(membership))
    if request.method != "PUT":
        return api_error("use GET or PUT", 405)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return api_error("the body is not JSON", 400)
    if not isinstance(body, dict):
        return api_error("the body must be a JSON object", 400)
    try:
        policy = retention.read_policy(body.get("default_period"), body.get("rules", []))
        if body.get("preview"):
            return JsonResponse({"preview": preview_json(purge.preview(membership.tenant, policy), policy)})
        change = retention.propose(membership, policy, ip=client_ip(request), token=getattr(request, "api_token", None))
    except RetentionError as exc:
        return api_error(str(exc), 400)
    except SearchUnavailable:
        return api_error("search is not answering; try again shortly", 503)
    in_force = change.state == RetentionChange.State.APPLIED
    document = {**policy_document(membership), "change": retention.change_json(change), "in_force": in_force}
    return JsonResponse(document, status=200 if in_force else 202)


@api_write_view
def api_change(request: ApiRequest, user: User, change_id: int, action: str) -> HttpResponseBase:
    """POST /api/v1/retention/changes/<id>/approve (another owner or admin) or /cancel."""
    membership = _admin_or_error(request, user)
    if isinstance(membership, JsonResponse):
        return membership
    if request.method != "POST":
        return api_error("use POST", 405)
    try:
        change = retention.change_for(membership.tenant, change_id)
    except RetentionChange.DoesNotExist:
        return api_error("not found", 404)
    token = getattr(request, "api_token", None)
    try:
        if action == "approve":
            change = retention.approve(membership, change, ip=client_ip(request), token=token)
        else:
            change = retention.cancel(membership, change, ip=client_ip(request), token=token)
    except RetentionError as exc:
        return api_error(str(exc), 409)
    return JsonResponse(retention.change_json(change))
