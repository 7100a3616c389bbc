"""Status → Charts (`/status/charts/`): the archive's traffic over time.

Every member may look (the same numbers as System Status, over time);
the data is the member's own tenant's only.  Refusals that named no tenant
(an unknown journal address, a sender outside the allow-list, a peer over
its limits, a malformed command) belong to nobody's archive: only operators
(staff users) see them, in a chart of their own below the tenant's.
"""

from __future__ import annotations

from datetime import datetime

from django.http import HttpResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.views.decorators.http import require_GET

from ingest.stats import untenanted_rejections
from m365.import_actions import has_imports, import_days
from tenants.models import Membership, Tenant, User
from web import stats
from web.roles import SignedInRequest, member_required
from web.status import counters
from web.svgchart import BarChart, HBarChart, Series, bar_chart, hbar_chart

REASONS = {
    # Labels for the ingest's reason codes (ingest/smtp.py); others show as they are.
    "too_large": "Over the size limit",
    "too_many_recipients": "Too many recipients in one message",
    "rate_limited": "Over the rate limit (Exchange retries)",
    "spool_full": "Our spool was full (Exchange retries)",
    "temporary_failure": "Temporary trouble on our side (Exchange retries)",
    "unverified_sender_domain": "Validation mail from an unverified domain",
    "unknown_recipient": "Unknown journal address",
    "unknown_recipient_guessing": "Too many unknown journal addresses from one peer",
    "malformed_recipient": "Malformed recipient address",
    "not_our_domain": "Recipient not on the journal domain (relaying)",
    "other_region": "Journal address of another region",
    "sender_not_allowed": "Sender outside the allowed networks",
    "tls_required": "Sender did not start TLS",
    "over_capacity": "Too many connections (sender retries)",
    "directory_unavailable": "Token directory not ready (sender retries)",
    "held_limit": "Too much mail for postmaster or unverified domains from one peer",
}


def _hour_axis(starts: list[datetime]) -> list[str]:
    labels = []
    for start in starts:
        if start.hour == 0:
            labels.append(start.strftime("%-d %b"))
        elif start.hour % 6 == 0:
            labels.append(start.strftime("%H:00"))
        else:
            labels.append("")
    return labels


def _summary(buckets: list[stats.Bucket], period: str) -> str:
    received = sum(b.received for b in buckets)
    archived = sum(b.archived for b in buckets)
    return f"{received:,} received and {archived:,} archived {period}."


def traffic_charts(buckets_hourly: list[stats.Bucket], buckets_daily: list[stats.Bucket]) -> tuple[BarChart, BarChart]:
    hourly = bar_chart(
        id="chart-hourly",
        title="Messages per hour, last 48 hours (UTC)",
        description="Bars per hour: messages received over SMTP and messages archived.",
        categories=[b.start.strftime("%-d %b %H:00") for b in buckets_hourly],
        axis_labels=_hour_axis([b.start for b in buckets_hourly]),
        series=[
            Series("received", "Received", [b.received for b in buckets_hourly]),
            Series("archived", "Archived", [b.archived for b in buckets_hourly]),
        ],
        y_label="messages",
        category_label="Hour (UTC)",
        summary=_summary(buckets_hourly, "in the last 48 hours"),
    )
    daily = bar_chart(
        id="chart-daily",
        title="Messages per day, last 30 days (UTC)",
        description="Bars per day: messages received over SMTP and messages archived.",
        categories=[b.start.strftime("%a %-d %b") for b in buckets_daily],
        axis_labels=[b.start.strftime("%-d %b") if i % 5 == 4 else "" for i, b in enumerate(buckets_daily)],
        series=[
            Series("received", "Received", [b.received for b in buckets_daily]),
            Series("archived", "Archived", [b.archived for b in buckets_daily]),
        ],
        y_label="messages",
        category_label="Day (UTC)",
        summary=_summary(buckets_daily, "in the last 30 days"),
    )
    return hourly, daily


def storage_chart(tenant: Tenant, buckets_daily: list[stats.Bucket]) -> BarChart:
    total = stats.stored_before(tenant, buckets_daily[0].start)
    added = sum(b.stored for b in buckets_daily)
    running = []
    for b in buckets_daily:
        total += b.stored
        running.append(total)
    return bar_chart(
        id="chart-storage",
        title="Storage used, end of each day, last 30 days",
        description="Bytes of mail stored as received, at the end of each day.",
        categories=[b.start.strftime("%a %-d %b") for b in buckets_daily],
        axis_labels=[b.start.strftime("%-d %b") if i % 5 == 4 else "" for i, b in enumerate(buckets_daily)],
        series=[Series("stored", "Stored", running)],
        category_label="Day (UTC)",
        summary=f"{filesizeformat(total)} stored now, {filesizeformat(added)} of it received in the last 30 days.",
        fmt=filesizeformat,
        binary=True,
    )


def sync_chart(buckets: list[stats.SyncBucket]) -> BarChart:
    received = sum(b.received for b in buckets)
    processed = sum(b.processed for b in buckets)
    failed = sum(b.failed for b in buckets)
    return bar_chart(
        id="chart-sync",
        title="Microsoft 365 folder sync: notifications per hour, last 48 hours (UTC)",
        description=(
            "Bars per hour: change notifications Microsoft Graph posted to us, those the worker processed,"
            " and those it gave up on (Graph refused, or the item could not be read)."
        ),
        categories=[b.start.strftime("%-d %b %H:00") for b in buckets],
        axis_labels=_hour_axis([b.start for b in buckets]),
        series=[
            Series("received", "Received", [b.received for b in buckets]),
            Series("processed", "Processed", [b.processed for b in buckets]),
            Series("failed", "Failed", [b.failed for b in buckets]),
        ],
        y_label="notifications",
        category_label="Hour (UTC)",
        summary=(
            f"{received:,} notifications received and {processed:,} processed in the last 48 hours"
            f"{f', {failed:,} of them failed' if failed else ''}."
        ),
    )


@require_GET
@member_required
def charts(request: SignedInRequest, membership: Membership) -> HttpResponse:
    tenant = membership.tenant
    now = timezone.now()
    buckets_hourly = stats.hourly(tenant, now)
    buckets_daily = stats.daily(tenant, now)
    hourly, daily = traffic_charts(buckets_hourly, buckets_daily)
    c = counters(tenant)
    # The same 30 days as the daily chart: from midnight UTC 29 days ago.
    rejected = stats.rejections(tenant, buckets_daily[0].start)
    context = {
        "membership": membership,
        "hourly": hourly,
        "daily": daily,
        "storage": storage_chart(tenant, buckets_daily),
        "backlog_chart": hbar_chart(
            id="chart-backlog",
            title="Backlog now",
            description="Messages waiting for the worker or the search index, and failures.",
            items=[
                ("Awaiting verification", c.pending),
                ("Waiting to be searchable", c.indexing_backlog),
                ("Failed verification", c.failed),
                ("Could not be read (kept)", c.parse_failed),
            ],
            nothing="Nothing waiting: every message received is archived and searchable, and none failed.",
        ),
        "rejections_chart": hbar_chart(
            id="chart-rejections",
            title="Rejected deliveries by reason, last 30 days",
            description="Deliveries the SMTP ingest refused, by reason.",
            items=sorted(((REASONS.get(k, k), v) for k, v in rejected.items()), key=lambda kv: -kv[1]),
        ),
        "counters": c,
        "now": now,
        "untenanted_chart": _untenanted_chart(request.user, buckets_daily[0].start),
        "import_chart": _import_chart(tenant, buckets_daily),
        "sync_chart": sync_chart(stats.sync_hourly(tenant, now)) if stats.syncs_folders(tenant) else None,
    }
    return render(request, "web/charts.html", context)


def _untenanted_chart(user: User, since: datetime) -> HBarChart | None:
    """Operators only: refusals of the whole region that named no tenant (see the module docstring)."""
    if not user.is_staff:
        return None
    return hbar_chart(
        id="chart-untenanted-rejections",
        title="Refused before any tenant was known, whole region, last 30 days (operators only)",
        description="Deliveries the SMTP ingest refused without a tenant, by reason.",
        items=sorted(((REASONS.get(k, k), v) for k, v in untenanted_rejections(since).items()), key=lambda kv: -kv[1]),
    )


def _import_chart(tenant: Tenant, buckets_daily: list[stats.Bucket]) -> BarChart | None:
    """Messages imported from Microsoft 365 per day: for tenants that ever started an import."""
    if not has_imports(tenant):
        return None
    per_day = import_days(tenant, buckets_daily[0].start.date())
    values = [per_day.get(b.start.date(), 0) for b in buckets_daily]
    return bar_chart(
        id="chart-m365-import",
        title="Import from Microsoft 365, messages per day, last 30 days (UTC)",
        description="Bars per day: messages fetched from the mailboxes and stored for archiving.",
        categories=[b.start.strftime("%a %-d %b") for b in buckets_daily],
        axis_labels=[b.start.strftime("%-d %b") if i % 5 == 4 else "" for i, b in enumerate(buckets_daily)],
        series=[Series("imported", "Imported", values)],
        y_label="messages",
        category_label="Day (UTC)",
        summary=f"{sum(values):,} messages imported from Microsoft 365 in the last 30 days.",
    )
