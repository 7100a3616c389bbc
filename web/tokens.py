"""API tokens (`/settings/tokens/`): owners and admins create and revoke them.

A token acts as the member who created it, with that member's role at the
time of each request.  The secret is shown once, in the response to the
creation; only its hash is kept.
"""

from __future__ import annotations

from allauth.account.decorators import verified_email_required
from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from tenants import access
from tenants.api_tokens import create_api_token, revoke_api_token
from web.audit import client_ip, require_admin
from web.roles import SignedInRequest


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, label="Name", help_text="What the token is for, e.g. “eDiscovery export script”."
    )


@never_cache
@require_http_methods(["GET", "POST"])
@verified_email_required
def tokens(request: SignedInRequest) -> HttpResponse:
    membership = access.membership_for(request.user)
    require_admin(membership)
    form = TokenForm(request.POST or None)
    created = secret = None
    if request.method == "POST" and form.is_valid():
        created, secret = create_api_token(membership, form.cleaned_data["name"], ip=client_ip(request))
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
    membership = access.membership_for(request.user)
    require_admin(membership)
    token = access.api_token(membership.tenant, token_id)
    if revoke_api_token(membership, token, ip=client_ip(request)):
        messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("tokens")
