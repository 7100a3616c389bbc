"""API tokens (`/settings/tokens/`): owners and admins create and revoke them.

A token acts as the member who created it, with that member's role at the
time of each request, narrowed by its scope (`search:read` or `admin`), until
its optional expiry.  The secret is shown once, in the response to the
creation; only its hash is kept.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from allauth.account.decorators import verified_email_required
from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from tenants import access
from tenants.api_tokens import create_api_token, revoke_api_token
from tenants.models import ApiToken
from web.audit import client_ip, require_admin
from web.roles import SignedInRequest


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, label="Name", help_text="What the token is for, e.g. “eDiscovery export script”."
    )
    scope = forms.ChoiceField(
        choices=ApiToken.Scope.choices,
        initial=ApiToken.Scope.SEARCH_READ,
        label="Scope",
        help_text="search:read: search and download messages and exports. admin: everything your role allows.",
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        help_text="The token stops working at the start of this day (UTC); empty: until revoked.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def clean_expires_on(self) -> date | None:
        day: date | None = self.cleaned_data.get("expires_on")
        if day is not None and day <= timezone.now().date():
            raise forms.ValidationError("Pick a day after today, or leave it empty for no expiry.")
        return day


@never_cache
@require_http_methods(["GET", "POST"])
@verified_email_required
def tokens(request: SignedInRequest) -> HttpResponse:
    membership = access.request_member(request)
    require_admin(membership)
    form = TokenForm(request.POST or None)
    created = secret = None
    if request.method == "POST" and form.is_valid():
        day = form.cleaned_data["expires_on"]
        created, secret = create_api_token(
            membership,
            form.cleaned_data["name"],
            ip=client_ip(request),
            scope=form.cleaned_data["scope"],
            expires_at=datetime.combine(day, time(), tzinfo=UTC) if day else None,
        )
        form = TokenForm()
    ctx = {
        "membership": membership,
        "form": form,
        "created": created,
        "secret": secret,
        "tokens": access.api_tokens(membership.tenant),
    }
    return render(request, "web/tokens.html", ctx)


@require_POST
@verified_email_required
def revoke(request: SignedInRequest, token_id: int) -> HttpResponse:
    membership = access.request_member(request)
    require_admin(membership)
    token = access.api_token(membership.tenant, token_id)
    if revoke_api_token(membership, token, ip=client_ip(request)):
        messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("tokens")
