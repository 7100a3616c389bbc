"""The historical import from Microsoft 365: the page (`/settings/m365/import/`) and the API (`/api/v1/m365/import`).

Owners and admins only.  The page works without JavaScript (a form, and a
Refresh link for the progress); with it, `m365-import.js` polls the API and
moves the bar.  Every start, pause and resume is audited by `m365.import_actions`.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from m365 import import_actions
from m365.import_actions import ImportActive, ImportRefused, latest_import, progress, start_import
from tenants.models import Membership, User
from web.api import ApiRequest, api_error, api_membership, api_view, bearer_secret
from web.audit import client_ip
from web.roles import SignedInRequest, admin_required


class ImportForm(forms.Form):
    scope = forms.ChoiceField(
        choices=[("all", "All mailboxes"), ("some", "Only the mailboxes chosen below")],
        initial="all",
        widget=forms.RadioSelect,
        label="Mailboxes",
    )
    mailboxes = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple, label="Choose mailboxes")
    since = forms.DateField(
        required=False,
        label="Start date",
        help_text="Only mail received on or after this day (UTC). Leave empty for everything.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def __init__(self, *args: Any, choices: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["mailboxes"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = choices

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("scope") == "some" and not data.get("mailboxes"):
            self.add_error("mailboxes", "Choose at least one mailbox, or import all of them.")
        return data


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def import_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = ImportForm(request.POST or None, choices=import_actions.importable_mailboxes(membership.tenant))
    if request.method == "POST" and form.is_valid():
        wanted = "all" if form.cleaned_data["scope"] == "all" else list(form.cleaned_data["mailboxes"])
        try:
            start_import(membership.tenant, wanted, form.cleaned_data["since"], actor=membership, ip=client_ip(request))
        except ImportRefused as refused:
            form.add_error(None, str(refused).capitalize() + ".")
        else:
            messages.success(request, "Import started. This page shows its progress.")
            return redirect("m365-import")
    run = latest_import(membership.tenant)
    context = {"membership": membership, "form": form, "run": run, "progress": progress(run), "now": timezone.now()}
    return render(request, "web/m365_import.html", context)


@require_POST
@admin_required
def pause(request: SignedInRequest, membership: Membership) -> HttpResponse:
    run = latest_import(membership.tenant)
    if run is not None and import_actions.pause_import(membership.tenant, run, actor=membership, ip=client_ip(request)):
        messages.success(request, "Import paused. It goes on where it stopped when you resume it.")
    return redirect("m365-import")


@require_POST
@admin_required
def resume(request: SignedInRequest, membership: Membership) -> HttpResponse:
    run = latest_import(membership.tenant)
    if run is not None and import_actions.resume_import(
        membership.tenant, run, actor=membership, ip=client_ip(request)
    ):
        messages.success(request, "Import resumed.")
    return redirect("m365-import")


@require_POST
@admin_required
def cancel(request: SignedInRequest, membership: Membership) -> HttpResponse:
    run = latest_import(membership.tenant)
    if run is not None and import_actions.cancel_import(
        membership.tenant, run, actor=membership, ip=client_ip(request)
    ):
        messages.success(request, "Import cancelled. What it imported stays archived.")
    return redirect("m365-import")


# --- API ----------------------------------------------------------------------


def _csrf_failure(request: HttpRequest) -> HttpResponseBase | None:
    """A session's POST needs the CSRF token like a form's; a Bearer token's does not (no cookie to ride on)."""
    if bearer_secret(request) is not None:
        return None
    return CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, lambda r: HttpResponse(), (), {})


def parse_request(body: bytes) -> tuple[str | list[str], date | None]:
    """`{"mailboxes": "all" | [addresses], "since": "YYYY-MM-DD" | null}`; ImportRefused names what is wrong."""
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ImportRefused("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ImportRefused('the body must be a JSON object: {"mailboxes": "all", "since": "2024-01-01"}')
    unknown = set(data) - {"mailboxes", "since"}
    if unknown:
        raise ImportRefused(f"unknown field: {', '.join(sorted(unknown))}")
    mailboxes = data.get("mailboxes", "all")
    if mailboxes != "all" and not (isinstance(mailboxes, list) and all(isinstance(m, str) for m in mailboxes)):
        raise ImportRefused('mailboxes must be "all" or a list of addresses')
    since_value = data.get("since")
    since = None
    if since_value is not None:
        try:
            since = date.fromisoformat(since_value) if isinstance(since_value, str) else None
        except ValueError:
            since = None
        if since is None:
            raise ImportRefused(f"since must be a date as YYYY-MM-DD, not {since_value!r}")
    return mailboxes, since


@csrf_exempt  # checked in the view for session requests (_csrf_failure); Bearer requests carry no cookie
@require_http_methods(["GET", "POST"])
@api_view
def api_import(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = api_membership(request)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    if request.method == "POST":
        refused = _csrf_failure(request)
        if refused is not None:
            return api_error("CSRF token missing or incorrect (or use an API token)", 403)
        try:
            mailboxes, since = parse_request(request.body)
            token = getattr(request, "api_token", None)
            run = start_import(
                membership.tenant, mailboxes, since, actor=membership, ip=client_ip(request), token=token
            )
        except ImportRefused as refused_import:
            return api_error(str(refused_import), 409 if isinstance(refused_import, ImportActive) else 400)
        return JsonResponse(progress(run).as_json(), status=202)
    return JsonResponse(progress(latest_import(membership.tenant)).as_json())
