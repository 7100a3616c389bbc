"""Celery tasks of retention, legal hold, export and import: ids only, thin, safe to run twice."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from compliance import exports, imports
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
