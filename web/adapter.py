"""How Archiva customizes django-allauth's account flows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from django.conf import settings
from django.db import transaction
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse

from infra.storage import StorageError
from tenants import access
from tenants.actions import ActionRefused, accept_invitation, create_tenant
from tenants.models import Invitation
from web.mail import rebased, site_url

logger = logging.getLogger(__name__)

INVITATION_SESSION_KEY = "archiva_invitation"


def remember_invitation(request, secret: str, invitation: Invitation) -> None:
    """Keep an opened invitation for the sign-up that follows.

    The link was mailed to the invited address, so whoever opened it controls
    that mailbox: allauth may treat that address as verified at sign-up.
    """
    request.session[INVITATION_SESSION_KEY] = secret
    DefaultAccountAdapter(request).stash_verified_email(request, invitation.email)


def invitation_in_session(request) -> Invitation | None:
    secret = request.session.get(INVITATION_SESSION_KEY) if request is not None else None
    if not secret:
        return None
    try:
        return access.invitation_by_token(secret)
    except Http404:
        return None


def forget_invitation(request) -> None:
    request.session.pop(INVITATION_SESSION_KEY, None)


@dataclass(frozen=True)
class MailSite:
    """What allauth's mail templates know as `current_site`: ours, from SITE_ROOT.

    Without the sites framework allauth would take the request's Host header.
    """

    domain: str
    name: str = "Archiva"


class AccountAdapter(DefaultAccountAdapter):
    # --- links in mail: SITE_ROOT, never the Host header -----------------------

    def get_email_confirmation_url(self, request, emailconfirmation):
        return site_url(reverse("account_confirm_email", args=[emailconfirmation.key]))

    def get_reset_password_from_key_url(self, key):
        return rebased(super().get_reset_password_from_key_url(key))

    def send_mail(self, template_prefix, email, context):
        """Every allauth mail: its links (`*_url`: sign-up, password reset, …,
        built by allauth from the request) and `current_site` on SITE_ROOT."""
        context = {
            **{k: rebased(v) if k.endswith("_url") and isinstance(v, str) else v for k, v in context.items()},
            "current_site": MailSite(urlsplit(settings.SITE_ROOT).netloc),
        }
        return super().send_mail(template_prefix, email, context)

    # --- login ----------------------------------------------------------------

    def _get_login_attempts_cache_key(self, request, **credentials):
        """The `key` of the `login_failed` rate limit: the client's IP *and* the
        account, not the account alone.  Keyed by account alone, anyone could
        lock a user out by failing on purpose; the per-IP limit of
        ACCOUNT_RATE_LIMITS still caps what one address may try overall."""
        return f"{self.get_client_ip(request)}:{super()._get_login_attempts_cache_key(request, **credentials)}"

    def get_login_redirect_url(self, request):
        """Owners and admins start on System Status, everyone else on search."""
        from web.views import landing_page

        return reverse(landing_page(request.user))

    def get_signup_redirect_url(self, request):
        """As after login: an invited plain user or auditor starts on search."""
        return self.get_login_redirect_url(request)

    def save_user(self, request, user, form, commit=True):
        """Create the user and their tenant together, or neither.

        The tenant (owner membership, journal token, bucket) is written in
        the same transaction as the user: a failure leaves no account
        without an archive, and no archive without an owner.  A sign-up
        from an invitation joins the inviting tenant instead.
        """
        if not commit:
            return super().save_user(request, user, form, commit=False)
        invitation = getattr(form, "invitation", None)
        try:
            with transaction.atomic():
                user = super().save_user(request, user, form, commit=True)
                if invitation is not None:
                    from web.audit import client_ip

                    accept_invitation(invitation, user, ip=client_ip(request))
                else:
                    create_tenant(form.cleaned_data["organization"], user)
        except StorageError:
            logger.exception("sign-up failed: the tenant's bucket could not be created")
            raise ImmediateHttpResponse(render(request, "account/signup_unavailable.html", status=503)) from None
        except ActionRefused as refused:
            raise ImmediateHttpResponse(
                render(request, "team/join.html", {"refused": str(refused)}, status=409)
            ) from None
        if invitation is not None:
            forget_invitation(request)
        return user
