"""Rejected deliveries, counted per tenant, hour and reason; failed
publishes to the broker, counted per task.

A row per rejection would let anyone with a bad token fill the database,
so the ingest counts in memory and adds the counts to hourly rows every
few seconds.  Rejections before a tenant is known (unknown token, other
domain, sender policy, per-peer limits, bad commands) name no tenant: they
are counted in rows without one, which no tenant ever sees; operators
(staff users) see them on Status → Charts (`untenanted_rejections`), and in
the Prometheus metrics.  Their reasons are few, so they add a handful of
rows per hour however many a sender provokes.

A publish that fails (the broker away) is rare and costly already (the
publish retries for seconds), so each adds one to its task's row at once:
every process publishes (the ingest's committer, workers, web), and the
web's /metrics serves the sum as a Prometheus counter.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime

from django.db import IntegrityError, models, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from tenants.models import Tenant

log = logging.getLogger(__name__)


class RejectionCount(models.Model):
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    reason = models.CharField(max_length=64)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        app_label = "ingest"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "hour", "reason"], name="one_rejection_count_per_hour"),
        ]
        indexes = [models.Index(fields=["tenant", "hour"], name="rejection_tenant_hour")]

    def __str__(self) -> str:
        return f"{self.reason} x{self.count} at {self.hour:%Y-%m-%d %H}:00"


class RejectionCounter:
    """In-memory counts, flushed to RejectionCount rows by `flush()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[int | None, str]] = Counter()

    def add(self, tenant_id: int | None, reason: str) -> None:
        with self._lock:
            self._counts[(tenant_id, reason)] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return
        hour = timezone.now().replace(minute=0, second=0, microsecond=0)
        try:
            with transaction.atomic():
                for (tenant_id, reason), n in counts.items():
                    row = Q(tenant__isnull=True) if tenant_id is None else Q(tenant_id=tenant_id)
                    updated = RejectionCount.objects.filter(row, hour=hour, reason=reason).update(count=F("count") + n)
                    if not updated:
                        RejectionCount.objects.create(tenant_id=tenant_id, hour=hour, reason=reason, count=n)
        except Exception:
            # Counting must never harm ingest: put the counts back for next time.
            log.warning("could not record rejection counts; will retry", exc_info=True)
            with self._lock:
                self._counts.update(counts)


def rejections_since(since: datetime, tenant: Tenant | None = None) -> dict[str, int]:
    """Refusals since then, by reason: those counted against `tenant`, or with
    None those that named no tenant (for operators only, never a tenant's page).
    Callers scope `tenant` (archive.access.rejections_by_reason)."""
    counted = (
        RejectionCount.objects.filter(tenant__isnull=True)
        if tenant is None
        else RejectionCount.objects.filter(tenant=tenant)
    )
    rows = (
        counted.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0))
        .values("reason")
        .annotate(total=Sum("count"))
        .order_by("-total")
    )
    return {row["reason"]: row["total"] for row in rows}


def untenanted_rejections(since: datetime) -> dict[str, int]:
    """Refusals that named no tenant since then, by reason: for operators only, never a tenant's page."""
    return rejections_since(since)


class PublishFailureCount(models.Model):
    """Failed publishes of one task to the broker, ever: a counter, never lowered."""

    task = models.CharField(max_length=200, unique=True)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        app_label = "ingest"

    def __str__(self) -> str:
        return f"{self.task}: {self.count} failed publishes"


def count_publish_failure(task: str) -> None:
    """Add one to `task`'s failed publishes.  Never raises, and in a savepoint
    of its own: counting must not hide the broker's error from the caller,
    nor break a transaction it publishes from."""
    try:
        with transaction.atomic():
            if not _add_one(task):
                try:
                    with transaction.atomic():
                        PublishFailureCount.objects.create(task=task, count=1)
                except IntegrityError:  # another process made the row first
                    _add_one(task)
    except Exception:
        log.warning("could not count a failed publish of %s", task, exc_info=True)


def _add_one(task: str) -> int:
    return PublishFailureCount.objects.filter(task=task).update(count=F("count") + 1)


def publish_failures() -> dict[str, int]:
    """Failed publishes so far, by task name (every process's)."""
    return dict(PublishFailureCount.objects.values_list("task", "count"))
