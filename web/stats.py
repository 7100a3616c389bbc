"""Numbers over time for the Status charts, aggregated in the database.

Every query starts from an `archive.access` function, so it is scoped to
one tenant; buckets are hours or days in UTC, with empty ones filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Count, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.db.models.functions.datetime import TruncBase

from archive import access as archive_access
from m365 import notifications as m365_notifications
from tenants.models import Tenant

HOURS = 48
DAYS = 30


@dataclass(frozen=True)
class Bucket:
    start: datetime  # aware, UTC
    received: int  # deliveries accepted over SMTP
    archived: int  # messages archived (after merging reports of one original)
    stored: int  # bytes of the deliveries received in this bucket


def _per_bucket(
    queryset: QuerySet[Any], field: str, trunc: type[TruncBase], since: datetime, value: Aggregate | None = None
) -> dict[datetime, int]:
    rows = (
        queryset.filter(**{f"{field}__gte": since})
        .annotate(bucket=trunc(field, tzinfo=UTC))
        .values("bucket")
        .annotate(n=value or Count("id"))
        .order_by()
    )
    return {row["bucket"]: row["n"] or 0 for row in rows}


def _series(tenant: Tenant, starts: list[datetime], trunc: type[TruncBase]) -> list[Bucket]:
    since = starts[0]
    deliveries = archive_access.deliveries(tenant)
    received = _per_bucket(deliveries, "received_at", trunc, since)
    stored = _per_bucket(deliveries, "received_at", trunc, since, Sum("size"))
    archived = _per_bucket(archive_access.messages(tenant), "created_at", trunc, since)
    return [Bucket(s, received.get(s, 0), archived.get(s, 0), stored.get(s, 0)) for s in starts]


def hourly(tenant: Tenant, now: datetime, hours: int = HOURS) -> list[Bucket]:
    """The last `hours` hours, the current one included, oldest first."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=h) for h in range(hours - 1, -1, -1)]
    return _series(tenant, starts, TruncHour)


def daily(tenant: Tenant, now: datetime, days: int = DAYS) -> list[Bucket]:
    """The last `days` days, today included, oldest first."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=d) for d in range(days - 1, -1, -1)]
    return _series(tenant, starts, TruncDay)


def stored_before(tenant: Tenant, moment: datetime) -> int:
    """Bytes received before `moment`: the start of a cumulative storage line."""
    return archive_access.deliveries(tenant).filter(received_at__lt=moment).aggregate(total=Sum("size"))["total"] or 0


def rejections(tenant: Tenant, since: datetime) -> dict[str, int]:
    """Rejected deliveries by reason, from the ingest's own statistics."""
    return archive_access.rejections_by_reason(tenant, since)


@dataclass(frozen=True)
class SyncBucket:
    start: datetime  # aware, UTC
    received: int  # Graph notifications stored by /o365
    processed: int  # notifications a worker finished
    failed: int  # of those, the ones given up on (their error kept with them)


def sync_hourly(tenant: Tenant, now: datetime, hours: int = HOURS) -> list[SyncBucket]:
    """Folder-sync notifications received and processed per hour, the last `hours` hours."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=h) for h in range(hours - 1, -1, -1)]
    notifications = m365_notifications.for_tenant(tenant)
    received = _per_bucket(notifications, "received_at", TruncHour, starts[0])
    processed = _per_bucket(notifications, "processed_at", TruncHour, starts[0])
    failed = _per_bucket(notifications.exclude(error=""), "processed_at", TruncHour, starts[0])
    return [SyncBucket(s, received.get(s, 0), processed.get(s, 0), failed.get(s, 0)) for s in starts]


def syncs_folders(tenant: Tenant) -> bool:
    """Whether the tenant has ever had a folder-sync subscription (the sync chart is shown then)."""
    return m365_notifications.subscriptions_of(tenant).exists()
