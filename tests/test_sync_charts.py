"""Status → Charts: the Microsoft 365 folder-sync bars, notifications
received and processed per hour, for tenants that synchronise folders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from m365.sync import Notification
from tests.test_charts import BAR_RE, chart_html, fabrikam, table
from tests.test_o365_webhook import subscribe
from web import stats

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 14, 15, 30, tzinfo=UTC)


def notification(subscription, received_at, processed_at=None, error="") -> Notification:
    return Notification.objects.create(
        error=error,
        tenant=subscription.tenant,
        subscription=subscription,
        kind="change",
        event="created",
        payload={},
        received_at=received_at,
        processed_at=processed_at,
    )


def test_sync_buckets_count_received_and_processed_per_hour(org, outsider):
    ours, _ = subscribe(org.tenant)
    theirs, _ = subscribe(fabrikam(outsider), user_id="u-charlie", mailbox="charlie@fabrikam.com")
    notification(ours, NOW.replace(minute=1), NOW.replace(minute=2))
    notification(ours, NOW.replace(minute=3), NOW.replace(minute=4), error="GraphError: Forbidden (403)")
    notification(ours, NOW.replace(minute=20))  # not processed yet
    notification(ours, NOW - timedelta(hours=1, minutes=10), NOW.replace(minute=0))  # processed the next hour
    notification(ours, NOW - timedelta(hours=48))  # too old
    notification(theirs, NOW.replace(minute=5), NOW.replace(minute=6))  # another tenant's

    buckets = stats.sync_hourly(org.tenant, NOW)
    assert len(buckets) == 48
    assert buckets[-1].start == datetime(2026, 3, 14, 15, tzinfo=UTC)
    assert [(b.received, b.processed, b.failed) for b in buckets if b.received or b.processed] == [
        (1, 0, 0),
        (3, 3, 1),
    ]


def test_the_sync_chart_shows_only_for_a_tenant_that_synchronises_folders(client, org):
    client.force_login(org.owner)
    assert 'id="chart-sync"' not in chart_html(client)
    subscription, _ = subscribe(org.tenant)
    now = timezone.now()
    notification(subscription, now, now)
    notification(subscription, now)
    html = chart_html(client)
    bars = [(series, value) for series, value, _ in BAR_RE.findall(html.split('id="chart-sync"', 1)[1])]
    assert ("received", "2") in bars and ("processed", "1") in bars
    rows = table(html, "chart-sync")
    assert rows[now.strftime("%-d %b %H:00")] == ["2", "1", "0"]


def test_the_outsider_never_sees_another_tenants_sync(client, org, outsider):
    subscription, _ = subscribe(org.tenant)
    notification(subscription, timezone.now())
    client.force_login(outsider)
    assert 'id="chart-sync"' not in chart_html(client)
