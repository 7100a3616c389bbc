"""Audit log entries for a member's second factors (allauth.mfa's signals)."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import get_adapter
from allauth.mfa.signals import authenticator_added, authenticator_removed
from django.dispatch import receiver

from signin.mfa import record_authenticator_change
from tenants.models import AuditEvent


def _ip(request: Any) -> str | None:
    return get_adapter().get_client_ip(request) if request is not None else None


@receiver(authenticator_added)
def on_authenticator_added(sender: Any, request: Any, user: Any, authenticator: Any, **kwargs: Any) -> None:
    record_authenticator_change(user, AuditEvent.Action.MFA_ADDED, authenticator.type, _ip(request))


@receiver(authenticator_removed)
def on_authenticator_removed(sender: Any, request: Any, user: Any, authenticator: Any, **kwargs: Any) -> None:
    record_authenticator_change(user, AuditEvent.Action.MFA_REMOVED, authenticator.type, _ip(request))
