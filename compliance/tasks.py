"""The compliance worker tasks: ids only, thin, safe to run twice."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from compliance import exports, imports


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
