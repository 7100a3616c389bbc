"""Status → Charts (`/status/charts/`): traffic per hour and per day, backlog,
rejections and storage, as SVG drawn on the server with the numbers beside."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from archive.models import Message
from ingest.models import Delivery
from tests import archive_support
from tests.archive_support import padded_report, process
from tests.conftest import make_user
from tests.smtp_support import count_rejections
from web import stats
from web.svgchart import Series, bar_chart, nice_scale

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 14, 15, 30, tzinfo=UTC)
BAR_RE = re.compile(r'<rect class="chart__bar chart__bar--(\w+)"[^>]*data-value="(\d+)"><title>([^<]+)</title>')


def deliver(tenant, when, size=1000, status=Delivery.Status.STORED):
    """A report received at `when` (time-shifted), `size` bytes: a journal report when that fits, else filler."""
    n = Delivery.objects.count()
    raw = padded_report(f"chart-{n}@test", size) if size >= 1000 else b"x" * size
    delivery = archive_support.received_at(archive_support.deliver(tenant, raw), when)
    if status == Delivery.Status.FAILED:
        archive_support.fail_verification(delivery)
    return delivery


def archived(delivery, created_at, index=True):
    """The worker archives the delivery; its message made at `created_at` (time-shifted)."""
    process(delivery.pk, index=index)
    delivery.refresh_from_db()
    # The worker stamps the time now and takes no clock.
    Message.objects.filter(pk=delivery.message_id).update(created_at=created_at)
    return delivery


def fabrikam(outsider):
    return outsider.memberships.get().tenant


def chart_html(client) -> str:
    response = client.get(reverse("status-charts"))
    assert response.status_code == 200
    return response.content.decode()


def table(html: str, chart_id: str) -> dict[str, list[str]]:
    body = re.search(rf'id="{chart_id}-table">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>', body, re.S)
    return {label: re.findall(r"<td>([^<]*)</td>", cells) for label, cells in rows}


# --- aggregation ------------------------------------------------------------------------


def test_hourly_buckets_count_received_and_archived_per_hour_for_48_hours(org, outsider):
    first = deliver(org.tenant, NOW.replace(minute=5))
    deliver(org.tenant, NOW.replace(minute=29))
    deliver(org.tenant, NOW - timedelta(hours=2))
    deliver(org.tenant, NOW - timedelta(hours=47, minutes=30))  # 12 Mar 16:00, the oldest bucket
    deliver(org.tenant, NOW - timedelta(hours=48))  # 12 Mar 15:30: too old
    deliver(fabrikam(outsider), NOW)  # another tenant's
    archived(first, NOW.replace(minute=10))

    buckets = stats.hourly(org.tenant, NOW)
    assert len(buckets) == 48
    assert buckets[0].start == datetime(2026, 3, 12, 16, tzinfo=UTC)
    assert buckets[-1].start == datetime(2026, 3, 14, 15, tzinfo=UTC)
    assert [(b.received, b.archived) for b in buckets if b.received or b.archived] == [(1, 0), (1, 0), (2, 1)]
    assert buckets[0].received == 1
    assert buckets[-3].received == 1  # 13:00
    assert sum(b.stored for b in buckets) == 4000


def test_daily_buckets_cover_30_days_including_today(org):
    deliver(org.tenant, NOW, size=10)
    yesterdays = deliver(org.tenant, NOW - timedelta(days=1))
    deliver(org.tenant, NOW - timedelta(days=29, hours=15), size=40)  # 13 Feb 00:30
    deliver(org.tenant, NOW - timedelta(days=30), size=80)  # before the window
    archived(yesterdays, NOW - timedelta(days=1))
    buckets = stats.daily(org.tenant, NOW)
    assert len(buckets) == 30
    assert buckets[0].start == datetime(2026, 2, 13, tzinfo=UTC)
    assert [b.received for b in buckets][-2:] == [1, 1]
    assert buckets[0].received == 1
    assert [b.archived for b in buckets][-2:] == [1, 0]
    assert stats.stored_before(org.tenant, buckets[0].start) == 80


# --- the page ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "auditor", "user"])
def test_every_member_sees_the_charts_of_their_tenant(client, org, role):
    client.force_login(getattr(org, role))
    html = chart_html(client)
    for chart_id in ("chart-hourly", "chart-daily", "chart-storage", "chart-backlog", "chart-rejections"):
        assert f'id="{chart_id}"' in html


def test_a_delivery_this_hour_shows_as_a_bar_a_number_and_a_table_row(client, org):
    now = timezone.now()
    first = deliver(org.tenant, now)
    deliver(org.tenant, now)
    archived(first, now)
    client.force_login(org.owner)
    html = chart_html(client)

    hourly = re.search(r'<figure class="chart" id="chart-hourly">(.*?)</figure>', html, re.S).group(1)
    assert '<svg class="chart__svg" viewBox="0 0 900 280" role="img"' in hourly
    assert "<desc" in hourly
    bars = re.findall(BAR_RE, hourly)
    label = now.astimezone(UTC).strftime("%-d %b %H:00")
    assert ("received", "2", f"{label}: 2 received") in bars
    assert ("archived", "1", f"{label}: 1 archived") in bars
    # The y axis reads 0…4 with labelled grid lines; x labels every 6 hours.
    assert re.findall(r'text-anchor="end" dominant-baseline="middle">(\d+)</text>', hourly) == ["0", "1", "2", "3", "4"]
    assert len(re.findall(r'<text x="[\d.]+" y="256" text-anchor="middle">', hourly)) == 8
    assert table(html, "chart-hourly")[label] == ["2", "1"]
    assert "2 received and 1 archived in the last 48 hours." in hourly
    daily = table(html, "chart-daily")
    assert daily[now.astimezone(UTC).strftime("%a %-d %b")] == ["2", "1"]
    assert len(daily) == 30


def test_storage_is_the_running_total_at_the_end_of_each_day(client, org):
    today = timezone.now()
    deliver(org.tenant, today - timedelta(days=40), size=1024 * 1024)
    deliver(org.tenant, today - timedelta(days=1), size=512 * 1024)
    deliver(org.tenant, today, size=512 * 1024)
    client.force_login(org.owner)
    html = chart_html(client)
    storage = table(html, "chart-storage")
    values = list(storage.values())
    assert values[0] == ["1.0\xa0MB"]
    assert values[-2:] == [["1.5\xa0MB"], ["2.0\xa0MB"]]
    assert "2.0\xa0MB stored now, 1.0\xa0MB of it received in the last 30 days." in html
    ticks = re.search(r'id="chart-storage">(.*?)</svg>', html, re.S).group(1)
    assert ">1.0\xa0MB</text>" in ticks and ">2.0\xa0MB</text>" in ticks


def test_backlog_shows_what_waits_for_the_worker_and_the_index(client, org):
    now = timezone.now()
    deliver(org.tenant, now, status=Delivery.Status.STORED)
    deliver(org.tenant, now, status=Delivery.Status.STORED)
    deliver(org.tenant, now, status=Delivery.Status.FAILED)
    archived(deliver(org.tenant, now), now, index=False)  # archived, not yet indexed
    client.force_login(org.auditor)
    backlog = table(chart_html(client), "chart-backlog")
    assert backlog["Awaiting verification"] == ["2"]
    assert backlog["Failed verification"] == ["1"]
    assert int(backlog["Waiting to be searchable"][0]) >= 1


def test_rejections_come_from_the_ingests_statistics_and_only_the_tenants_own(client, org, outsider):
    client.force_login(org.owner)
    assert "No rejected deliveries in the last 30 days." in chart_html(client)

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    old = hour - timedelta(days=40)  # before the chart's 30 days
    for tenant, reason, count, when in [  # oldest first (see count_rejections)
        (org.tenant, "too_large", 99, old),
        (org.tenant, "too_large", 5, hour - timedelta(hours=1)),
        (org.tenant, "rate_limited", 3, hour),
        (org.tenant, "too_large", 12, hour),
        (org.tenant, "something_new", 1, hour),
        (fabrikam(outsider), "too_large", 1000, hour),
        (fabrikam(outsider), "sender_not_allowed", 7, hour),
    ]:
        count_rejections(tenant, reason, count, when)
    html = chart_html(client)
    rows = table(html, "chart-rejections")
    assert list(rows) == ["Over the size limit", "Over the rate limit (Exchange retries)", "something_new"]
    assert rows["Over the size limit"] == ["17"]
    assert re.search(r'class="chart__row-value"[^>]*>17</text>', html)

    client.force_login(outsider)  # the outsider sees his own, never Contoso's
    rows = table(chart_html(client), "chart-rejections")
    assert rows["Over the size limit"] == ["1,000"] and "something_new" not in rows


def test_the_outsider_sees_only_his_own_numbers(client, org, outsider):
    now = timezone.now()
    for _ in range(3):
        deliver(org.tenant, now, size=999_999)
    deliver(fabrikam(outsider), now, size=10)
    client.force_login(outsider)
    html = chart_html(client)
    assert "1 received and 0 archived in the last 48 hours." in html
    assert "Contoso" not in html
    assert "10\xa0bytes stored now" in html


def test_status_links_to_the_charts(client, org):
    client.force_login(org.user)
    html = client.get(reverse("status")).content.decode()
    assert f'href="{reverse("status-charts")}" id="charts-link"' in html


def test_visitors_are_sent_to_sign_in_and_people_of_no_tenant_get_404(client, org):
    response = client.get(reverse("status-charts"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    client.force_login(make_user("mallory@example.net"))
    assert client.get(reverse("status-charts")).status_code == 404


# --- drawing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maximum", "binary", "expected"),
    [
        (0, False, (4, 1)),
        (3, False, (4, 1)),
        (7, False, (8, 2)),
        (1234, False, (1500, 500)),
        (1_249_600, True, (2 * 1024**2, 1024**2)),
        (5000, True, (6 * 1024, 2 * 1024)),
    ],
)
def test_the_y_axis_uses_round_steps(maximum, binary, expected):
    assert nice_scale(maximum, binary=binary) == expected


def test_bars_stand_on_the_axis_and_scale_to_their_values():
    chart = bar_chart(
        id="c",
        title="t",
        description="d",
        categories=["a", "b"],
        axis_labels=["a", ""],
        series=[Series("received", "Received", [2, 8])],
    )
    low, high = chart.bars
    assert low.y + low.height == high.y + high.height == chart.bottom
    assert high.height == pytest.approx(4 * low.height)
    assert high.y == chart.top  # 8 is the top of a 0…8 scale
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8"]
    assert [t.label for t in chart.x_ticks] == ["a"]


def test_axis_labels_fit_inside_the_drawing_at_both_ends():
    """Issue 23: "20.0 KI" and "ec" were cut by the edges of the drawing."""
    from web.svgchart import CHAR_WIDTH, Series, bar_chart, hbar_chart

    def kib(value: float) -> str:
        return f"{value / 1024:.1f} KiB"

    labels = ["1 Dec"] + [""] * 28 + ["30 Dec"]
    chart = bar_chart(
        id="c", title="t", description="d", categories=[f"day {i}" for i in range(30)], axis_labels=labels,
        series=[Series("stored", "Stored", [20480.0] * 30)], y_label="bytes", fmt=kib, binary=True,
    )  # fmt: skip
    widest = max(len(t.label) for t in chart.y_ticks) * CHAR_WIDTH
    assert chart.left - 8 - widest >= 20  # the left labels, and the rotated axis title beside them
    assert chart.right + 8 + widest <= chart.width  # the right labels
    first, last = chart.x_ticks[0], chart.x_ticks[-1]
    for tick in (first, last):
        half = len(tick.label) * CHAR_WIDTH / 2
        inside = {"middle": (tick.position - half, tick.position + half), "start": (tick.position, 0),
                  "end": (0, tick.position)}[tick.anchor]  # fmt: skip
        assert inside[0] >= 0 and inside[1] <= chart.width
    empty = hbar_chart(id="b", title="Backlog", description="d", items=[("a", 0), ("b", 0)], nothing="Nothing waiting.")
    assert empty.all_zero and empty.nothing == "Nothing waiting."
    assert not hbar_chart(id="b", title="B", description="d", items=[("a", 0), ("b", 2)]).all_zero
