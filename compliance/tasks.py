"""Celery tasks of retention and legal hold: ids only, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from regions.current import current_region
from tenants import access

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def apply_retention() -> int:
    """The daily run in every tenant of the region: legal holds on objects,
    then expired, unheld messages deleted everywhere (each run audited with
    its counts); how many messages went.  One tenant's trouble does not stop the others."""
    from compliance import purge

    deleted = 0
    for tenant in access.tenants_of_region(current_region().code):
        try:
            deleted += purge.run(tenant).deleted
        except Exception:
            log.exception("retention run failed for tenant %s; the next run tries again", tenant.pk)
    return deleted


@shared_task(acks_late=True)
def sync_legal_holds(tenant_id: int) -> int:
    """Set or lift S3 legal holds after a hold was created or released; how many objects changed."""
    from compliance import worm

    tenant = access.tenants_of_region(current_region().code).get(pk=tenant_id)
    result = worm.sync_legal_holds(tenant)
    return result.placed + result.lifted
