"""How Archiva customizes allauth's MFA: secrets encrypted at rest, its own
name in authenticator apps, and no removing the last factor where the
tenant requires one."""

from __future__ import annotations

from typing import Any

from allauth.core import context
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator
from django.http import Http404

from infra import secrets
from signin.mfa import FACTOR_TYPES, has_second_factor, signed_in_with_password
from tenants import access


class MFAAdapter(DefaultMFAAdapter):  # type: ignore[misc]  # allauth ships no types
    error_messages = {
        **DefaultMFAAdapter.error_messages,
        "cannot_delete_authenticator": (
            "Your organization requires two-factor authentication for password sign-in: "
            "add a security key before turning this one off."
        ),
        "add_email_blocked": (
            "While two-factor authentication is on, new addresses cannot be added here. "
            "Turn it off first, or ask an owner to invite the new address."
        ),
    }

    def encrypt(self, text: str) -> str:
        """The TOTP secret and the recovery codes' seed, encrypted with ARCHIVA_SECRETS_KEY."""
        return secrets.encrypt(text.encode())

    def decrypt(self, encrypted_text: str) -> str:
        return secrets.decrypt(encrypted_text).decode()

    def get_public_key_credential_rp_entity(self) -> dict[str, str]:
        return {**super().get_public_key_credential_rp_entity(), "name": "Archiva"}

    def can_delete_authenticator(self, authenticator: Authenticator) -> bool:
        """Not the last second factor of a member whose tenant requires one
        (they would be sent straight back to enrolment)."""
        if authenticator.type not in FACTOR_TYPES:
            return True
        request: Any = context.request
        if request is None or not signed_in_with_password(request):
            return True
        try:
            tenant = access.membership_for(authenticator.user).tenant
        except Http404:
            return True
        if not tenant.require_mfa:
            return True
        others = Authenticator.objects.filter(user_id=authenticator.user_id, type__in=FACTOR_TYPES)
        return others.exclude(pk=authenticator.pk).exists() or not has_second_factor(authenticator.user)
