"""How Archiva customizes django-allauth's account flows."""

from __future__ import annotations

import logging

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from django.db import transaction
from django.shortcuts import render

from infra.storage import StorageError
from tenants.actions import create_tenant

logger = logging.getLogger(__name__)


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        """Create the user and their tenant together, or neither.

        The tenant (owner membership, journal token, bucket) is written in
        the same transaction as the user: a failure leaves no account
        without an archive, and no archive without an owner.
        """
        if not commit:
            return super().save_user(request, user, form, commit=False)
        organization = form.cleaned_data["organization"]
        try:
            with transaction.atomic():
                user = super().save_user(request, user, form, commit=True)
                create_tenant(organization, user)
        except StorageError:
            logger.exception("sign-up failed: the tenant's bucket could not be created")
            raise ImmediateHttpResponse(render(request, "account/signup_unavailable.html", status=503)) from None
        return user
