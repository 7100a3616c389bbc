"""Celery tasks of the ingest: they carry ids only and can run twice."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from infra.storage import IntegrityError, StorageError, get_store
from ingest.models import Delivery

log = logging.getLogger(__name__)

# A delivery enqueued this long ago and still not processed is published
# again: the task may have been lost with a crashed ingest or broker.
REQUEUE_AFTER = timedelta(minutes=15)


@shared_task(
    bind=True,
    autoretry_for=(StorageError,),
    dont_autoretry_for=(IntegrityError,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=None,
    acks_late=True,
)
def process_delivery(self, delivery_id: int) -> str:
    """Verify a stored delivery against its hash and mark it received."""
    delivery = Delivery.objects.select_related("tenant").filter(pk=delivery_id).first()
    if delivery is None:
        log.warning("delivery %s does not exist", delivery_id)
        return "missing"
    if delivery.status != Delivery.Status.STORED:
        return delivery.status  # already done: running twice changes nothing
    Delivery.objects.filter(pk=delivery.pk).update(attempts=delivery.attempts + 1)
    try:
        get_store().verify(delivery.tenant.bucket, delivery.storage_key, delivery.sha256)
    except IntegrityError as exc:
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.STORED).update(
            status=Delivery.Status.FAILED, error=str(exc)
        )
        log.error("delivery %s failed verification: %s", delivery_id, exc)
        return Delivery.Status.FAILED
    Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.STORED).update(
        status=Delivery.Status.RECEIVED, verified_at=timezone.now(), error=""
    )
    return Delivery.Status.RECEIVED


def stranded_deliveries(now=None):
    """Deliveries stored but never (or long ago) handed to a worker."""
    from django.db.models import Q

    now = now or timezone.now()
    grace = timedelta(seconds=settings.ARCHIVA_SWEEP_GRACE)
    return Delivery.objects.filter(status=Delivery.Status.STORED, received_at__lt=now - grace).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - REQUEUE_AFTER)
    )


def sweep(limit: int = 10_000) -> int:
    """Enqueue stranded deliveries; returns how many were published."""
    from ingest.record import enqueue

    ids = list(stranded_deliveries().order_by("received_at").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    Delivery.objects.filter(pk__in=ids).update(enqueued_at=timezone.now())
    if not enqueue(ids):
        return 0
    log.info("sweep enqueued %d stranded deliveries", len(ids))
    return len(ids)


@shared_task
def sweep_stranded() -> int:
    return sweep()
