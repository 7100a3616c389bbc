"""Celery tasks of billing: thin, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from billing import actions, stripe_api
from regions.current import current_region
from tenants import access as tenant_access

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def sync_billing() -> int:
    """Daily, each tenant of the region: the subscription's quantity follows the mailbox count
    (Stripe prorates), and the read-only notice goes out once.  Nothing when billing is off.
    One tenant's trouble (Stripe down) does not stop the others; how many tenants were tended."""
    if not stripe_api.enabled():
        return 0
    tended = 0
    for tenant in tenant_access.tenants_of_region(current_region().code):
        try:
            actions.tend(tenant, timezone.now())
            tended += 1
        except Exception:
            log.exception("billing sync failed for tenant %s; tomorrow's run tries again", tenant.pk)
    return tended
