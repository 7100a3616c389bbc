"""Celery tasks of retention, legal hold, export and import: ids only, thin, safe to run twice."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from compliance import exports, imports, scrub
from ingest.stats import count_publish_failure
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


@shared_task(acks_late=True)
def build_export(export_id: int) -> str:
    return str(exports.build_export(export_id))


@shared_task(acks_late=True)
def run_import(import_id: int) -> str:
    return str(imports.run_import(import_id))


@shared_task
def tend_exports() -> dict[str, int]:
    """Beat: delete exports past their 7 days; publish again builds and imports the broker lost."""
    stranded = timedelta(seconds=settings.ARCHIVA_REQUEUE_AFTER)
    return {
        "expired": exports.expire_exports(),
        "exports_requeued": exports.requeue_stranded(stranded),
        "imports_requeued": imports.requeue_stranded(stranded),
    }


@shared_task(acks_late=True)
def scrub_storage() -> int:
    """The daily scrub: one task per tenant (a big bucket's slice must not
    hold up the others); how many were published.  A tenant's task the broker
    refuses is counted (archiva_broker_publish_failures) and skipped: its next
    run checks the missed day's share too (`scrub.budget` follows the time)."""
    tenant_ids = list(access.tenants_of_region(current_region().code).values_list("pk", flat=True))
    published = 0
    for tenant_id in tenant_ids:  # each bucket is scrubbed, however idle
        try:
            scrub_tenant_storage.delay(tenant_id)
        except Exception:
            count_publish_failure(scrub_tenant_storage.name)
            log.error("could not publish the scrub of tenant %s; its next run catches up", tenant_id, exc_info=True)
        else:
            published += 1
    return published


# A day's slice of a big bucket reads for a long time: far beyond the default 5-minute limit.
@shared_task(acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def scrub_tenant_storage(tenant_id: int) -> int:
    """Check this run's slice of one tenant's objects; how many were bad."""
    result = scrub.scrub_tenant(access.tenants_of_region(current_region().code).get(pk=tenant_id))
    if result.problems:
        log.error("scrub found %d bad objects in tenant %s", len(result.problems), tenant_id)
    return len(result.problems)
