"""Mail to a tenant's billing contact and admins when its standing changes for the worse."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail

from billing.models import BillingAccount
from tenants import access as tenant_access
from tenants.models import Role

log = logging.getLogger(__name__)


def recipients(account: BillingAccount) -> list[str]:
    """The billing email, then the owners' and admins' addresses, each once."""
    found = [account.billing_email] if account.billing_email else []
    for member in tenant_access.members(account.tenant):
        if member.role in (Role.OWNER, Role.ADMIN) and member.user.email not in found:
            found.append(member.user.email)
    return found


def send(account: BillingAccount, subject: str, text: str) -> None:
    """One mail to everyone who should know; a mail server's trouble is logged, never raised
    (a webhook must not fail, and be retried, because the mail could not go)."""
    link = f"{settings.SITE_ROOT}/billing/"
    body = f"{text}\n\nJournal reports are still accepted and archived: no mail is lost.\n\nBilling: {link}\n"
    try:
        send_mail(f"Archiva: {subject}", body, settings.DEFAULT_FROM_EMAIL, recipients(account))
    except Exception:
        log.exception("could not send the billing notice %r for tenant %s", subject, account.tenant_id)


def payment_failed(account: BillingAccount, grace_ends_on: str) -> None:
    send(
        account,
        "a payment failed",
        f"Stripe could not take the payment for {account.tenant.name}'s subscription. Update the card or pay "
        f"the open invoice by {grace_ends_on}; after that search and export become read-only until it is paid.",
    )


def read_only(account: BillingAccount) -> None:
    send(
        account,
        "your archive is read-only",
        f"The grace period for {account.tenant.name} has ended: search and export still work, nothing else "
        "can be changed until the subscription is paid.",
    )
