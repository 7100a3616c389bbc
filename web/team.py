"""The team page (`/team/`): members, roles, aliases and invitations.

Admins only; objects of other tenants are 404 through `tenants.access`, and
the owner rules live in `tenants.actions` whoever calls them.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.mail import (
    send_mail,
)
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from tenants import access, actions
from tenants.actions import ActionRefused
from tenants.models import Invitation, Membership, Role
from web.adapter import remember_invitation
from web.audit import client_ip
from web.forms import AliasForm, BatchInviteForm, InviteForm, RoleForm, role_choices
from web.mail import site_url
from web.roles import admin_required
from web.views import landing_page

log = logging.getLogger(__name__)


def send_invitation(request: HttpRequest, invitation: Invitation, secret: str) -> bool:
    """Mail the link; False (and logged) when the mail could not be handed over."""
    context = {
        "invitation": invitation,
        "inviter": invitation.invited_by.email if invitation.invited_by else "An admin",
        "link": site_url(reverse("team-join", args=[secret])),
        "role": Role(invitation.role).label,
    }
    subject = render_to_string("team/email/invitation_subject.txt", context).strip()
    body = render_to_string("team/email/invitation_message.txt", context)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
    except Exception:
        log.exception("invitation mail %s could not be sent", invitation.pk)
        return False
    return True


def _invite(request: HttpRequest, membership: Membership, email: str, role: str) -> None:
    again = access.pending_invitations(membership.tenant).filter(email=email.strip().lower()).exists()
    invitation, secret = actions.invite_member(membership, email, role, ip=client_ip(request))
    if send_invitation(request, invitation, secret):
        if again:
            messages.success(
                request, f"Invitation sent again to {invitation.email}: the link in the earlier mail no longer works."
            )
        else:
            messages.success(request, f"Invitation sent to {invitation.email}.")
    else:
        messages.error(request, f"The invitation mail to {invitation.email} could not be sent. Try “Resend” later.")


def _member_rows(membership: Membership) -> list[dict[str, Any]]:
    rows = []
    for member in access.members(membership.tenant):
        aliases = {alias.address for alias in member.aliases.all()}
        rows.append(
            {
                "member": member,
                "is_you": member.pk == membership.pk,
                # Admins manage everyone but owners; owners manage everyone.
                "can_change": membership.role == Role.OWNER or member.role != Role.OWNER,
                "verified": [a for a in access.addresses_for(member) if a not in aliases],
            }
        )
    return rows


def _team_page(
    request: HttpRequest,
    membership: Membership,
    invite_form: InviteForm,
    status: int = 200,
    batch_form: BatchInviteForm | None = None,
) -> HttpResponse:
    context = {
        "batch_form": batch_form or BatchInviteForm(actor=membership),
        "membership": membership,
        "rows": _member_rows(membership),
        "invitations": access.pending_invitations(membership.tenant),
        "invite_form": invite_form,
        "role_choices": role_choices(membership),
        "alias_form": AliasForm(),
    }
    return render(request, "team/team.html", context, status=status)


@require_http_methods(["GET", "POST"])
@admin_required
def team(request: HttpRequest, membership: Membership) -> HttpResponse:
    form = InviteForm(request.POST or None, actor=membership)
    if request.method == "POST" and form.is_valid():
        try:
            _invite(request, membership, form.cleaned_data["email"], form.cleaned_data["role"])
        except ActionRefused as refused:
            form.add_error("email", str(refused))
        else:
            return redirect("team")
    return _team_page(request, membership, form)


@require_POST
@admin_required
def invite_many(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Several invitations at once, from a textarea or a CSV file of `email,role`."""
    form = BatchInviteForm(request.POST, request.FILES, actor=membership)
    if not form.is_valid():
        return _team_page(request, membership, InviteForm(actor=membership), 400, batch_form=form)
    for email, role in form.cleaned_data["invitations"]:
        try:
            _invite(request, membership, email, role)
        except ActionRefused as refused:
            messages.error(request, str(refused))
        except PermissionDenied:
            messages.error(request, f"Not sent to {email}: only owners can invite an owner.")
    return redirect("team")


@require_POST
@admin_required
def resend_invitation(request: HttpRequest, membership: Membership, invitation_id: int) -> HttpResponse:
    old = access.invitation(membership.tenant, invitation_id)
    try:
        _invite(request, membership, old.email, old.role)
    except ActionRefused as refused:
        messages.error(request, str(refused))
    return redirect("team")


@require_POST
@admin_required
def revoke_invitation(request: HttpRequest, membership: Membership, invitation_id: int) -> HttpResponse:
    invitation = access.invitation(membership.tenant, invitation_id)
    actions.revoke_invitation(membership, invitation, ip=client_ip(request))
    messages.success(request, f"The invitation of {invitation.email} was revoked.")
    return redirect("team")


@require_POST
@admin_required
def change_role(request: HttpRequest, membership: Membership, membership_id: int) -> HttpResponse:
    target = access.member(membership.tenant, membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
        return redirect("team")
    try:
        actions.change_role(membership, target, form.cleaned_data["role"], ip=client_ip(request))
    except ActionRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"{target.user.email} is now {target.get_role_display().lower()}.")
    return redirect("team")


@require_POST
@admin_required
def remove_member(request: HttpRequest, membership: Membership, membership_id: int) -> HttpResponse:
    target = access.member(membership.tenant, membership_id)
    try:
        actions.remove_member(membership, target, ip=client_ip(request))
    except ActionRefused as refused:
        messages.error(request, str(refused))
        return redirect("team")
    messages.success(request, f"{target.user.email} was removed from {membership.tenant.name}.")
    return redirect("home" if target.pk == membership.pk else "team")


@require_POST
@admin_required
def add_alias(request: HttpRequest, membership: Membership, membership_id: int) -> HttpResponse:
    target = access.member(membership.tenant, membership_id)
    form = AliasForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Alias for {target.user.email}: {' '.join(map(str, form.errors['address']))}")
        return redirect("team")
    try:
        alias = actions.add_alias(membership, target, form.cleaned_data["address"], ip=client_ip(request))
    except ActionRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"{target.user.email} can now search the mail of {alias.address}.")
    return redirect("team")


@require_POST
@admin_required
def remove_alias(request: HttpRequest, membership: Membership, alias_id: int) -> HttpResponse:
    alias = access.alias(membership.tenant, alias_id)
    actions.remove_alias(membership, alias, ip=client_ip(request))
    messages.success(request, f"Alias {alias.address} removed.")
    return redirect("team")


# --- joining -------------------------------------------------------------------


def _join_context(request: HttpRequest, invitation: Invitation, secret: str) -> dict[str, Any]:
    user = request.user
    context = {"invitation": invitation, "role": Role(invitation.role).label, "secret": secret}
    if user.is_authenticated:
        context["address_matches"] = EmailAddress.objects.filter(
            user=user, email__iexact=invitation.email, verified=True
        ).exists()
    else:
        context["account_exists"] = EmailAddress.objects.filter(email__iexact=invitation.email).exists()
    return context


@require_http_methods(["GET", "POST"])
def join(request: HttpRequest, secret: str) -> HttpResponse:
    """The link of an invitation: sign up, or sign in and accept."""
    try:
        invitation = access.invitation_by_token(secret)
    except Http404:
        return render(request, "team/join.html", {"invalid": True}, status=404)
    if not request.user.is_authenticated:
        if request.method == "POST":
            return redirect(f"{reverse('account_login')}?next={request.path}")
        remember_invitation(request, secret, invitation)
        return render(request, "team/join.html", _join_context(request, invitation, secret))
    context = _join_context(request, invitation, secret)
    if request.method == "GET" or not context["address_matches"]:
        return render(request, "team/join.html", context)
    try:
        actions.accept_invitation(invitation, request.user, ip=client_ip(request))
    except ActionRefused as refused:
        return render(request, "team/join.html", {**context, "refused": str(refused)}, status=409)
    messages.success(request, f"Welcome to {invitation.tenant.name}.")
    return redirect(landing_page(request.user))
