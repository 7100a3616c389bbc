"""Celery tasks of compliance: ids only, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from compliance import scrub

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def scrub_storage() -> int:
    """The daily scrub: one task per tenant (a big bucket's slice must not hold up the others); how many."""
    tenant_ids = scrub.tenants_to_scrub()
    for tenant_id in tenant_ids:
        scrub_tenant_storage.delay(tenant_id)
    return len(tenant_ids)


# A day's slice of a big bucket reads for a long time: far beyond the default 5-minute limit.
@shared_task(acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def scrub_tenant_storage(tenant_id: int) -> int:
    """Check this run's slice of one tenant's objects; how many were bad."""
    result = scrub.scrub_tenant(scrub.tenant_by_id(tenant_id))
    if result.problems:
        log.error("scrub found %d bad objects in tenant %s", len(result.problems), tenant_id)
    return len(result.problems)
