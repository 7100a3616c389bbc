"""The pipeline's state as Prometheus metrics, read from the database at each scrape.

Served by the web app's /metrics (web.metrics), one scrape for the whole
region: the database is where every process's work ends up, so the figures
are the same whichever pod answers, survive restarts, and need no per-process
counters added up (the one counter, failed publishes, is added to its row by
the process whose publish failed).  Every query here uses an index and
touches no message body: counts per status (delivery_sweep), the oldest row
of a state, one `ORDER BY received_at DESC LIMIT 1` per tenant
(delivery_tenant_recent), and the failed publishes' rows (one per task).
The count per status reads the whole delivery_sweep index (an index-only
scan, O(deliveries)): at hundreds of millions of rows scrape every 60 s or
more (docs/operations.md).

Cross-tenant by design (an operator's view), read-only, labelled by the
tenant's public id, never its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Min, OuterRef, Subquery
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from archive.models import Message
from ingest.models import Delivery
from ingest.stats import publish_failures
from tenants.models import Tenant

# Deliveries the workers have yet to archive (stored: 250 sent; received: verified).
WAITING = (Delivery.Status.STORED, Delivery.Status.RECEIVED)


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then else 0.0


class PipelineCollector:
    def describe(self) -> Iterator[Metric]:
        """Names only, without a query (the registry asks at registration)."""
        for name in (
            "archiva_deliveries",
            "archiva_queue_depth",
            "archiva_backlog_age_seconds",
            "archiva_deliveries_unpublished",
            "archiva_deliveries_unpublished_age_seconds",
            "archiva_index_pending_messages",
            "archiva_index_failed_messages",
            "archiva_index_lag_seconds",
            "archiva_tenant_last_journal_report_timestamp_seconds",
        ):
            yield GaugeMetricFamily(name, "")
        yield CounterMetricFamily("archiva_broker_publish_failures", "", labels=["task"])

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        deliveries = GaugeMetricFamily("archiva_deliveries", "Deliveries by state", labels=["status"])
        counts = dict(Delivery.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in Delivery.Status:
            deliveries.add_metric([status.value], counts.get(status.value, 0))
        yield deliveries
        yield GaugeMetricFamily(
            "archiva_queue_depth",
            "Deliveries stored or verified and not yet archived: the workers' backlog (the worker HPA's metric)",
            value=sum(counts.get(status.value, 0) for status in WAITING),
        )
        oldest = Delivery.objects.filter(status__in=WAITING).aggregate(at=Min("received_at"))["at"]
        yield GaugeMetricFamily(
            "archiva_backlog_age_seconds",
            "Age of the oldest delivery not yet archived (0 when none waits)",
            value=_age(now, oldest),
        )
        # Stored but never handed to the broker: a publish failed and the sweep has not caught up yet.
        unpublished = Delivery.objects.filter(status=Delivery.Status.STORED, enqueued_at__isnull=True).aggregate(
            n=Count("id"), at=Min("received_at")
        )
        yield GaugeMetricFamily(
            "archiva_deliveries_unpublished",
            "Deliveries stored whose task was never published to the broker (publish failures not yet swept)",
            value=unpublished["n"],
        )
        yield GaugeMetricFamily(
            "archiva_deliveries_unpublished_age_seconds",
            "Age of the oldest delivery whose task was never published (0 when none)",
            value=_age(now, unpublished["at"]),
        )
        yield self._publish_failures()
        index = dict(
            Message.objects.exclude(index_status=Message.IndexStatus.INDEXED)
            .values_list("index_status")
            .annotate(n=Count("id"))
            .order_by()
        )
        yield GaugeMetricFamily(
            "archiva_index_pending_messages",
            "Archived messages not yet (re)indexed in search",
            value=index.get(Message.IndexStatus.PENDING.value, 0),
        )
        yield GaugeMetricFamily(
            "archiva_index_failed_messages",
            "Messages that could not be indexed (their stored objects unreadable)",
            value=index.get(Message.IndexStatus.FAILED.value, 0),
        )
        pending_since = Message.objects.filter(index_status=Message.IndexStatus.PENDING).aggregate(
            at=Min("created_at")
        )["at"]
        yield GaugeMetricFamily(
            "archiva_index_lag_seconds",
            "Age of the oldest archived message not yet searchable (0 when none)",
            value=_age(now, pending_since),
        )
        last = GaugeMetricFamily(
            "archiva_tenant_last_journal_report_timestamp_seconds",
            "When the tenant's last journal report arrived over SMTP (Unix time); only tenants that sent one",
            labels=["tenant"],
        )
        latest = Delivery.objects.filter(tenant=OuterRef("pk"), source=Delivery.Source.JOURNAL).order_by("-received_at")
        rows = Tenant.objects.annotate(last=Subquery(latest.values("received_at")[:1])).filter(last__isnull=False)
        for public_id, at in rows.values_list("public_id", "last"):
            last.add_metric([str(public_id)], at.timestamp())
        yield last

    @staticmethod
    def _publish_failures() -> Metric:
        """Counted by every process where its publish failed (ingest.stats), summed here."""
        family = CounterMetricFamily(
            "archiva_broker_publish_failures",
            "Tasks that could not be published to the broker, by task (every process's failures)",
            labels=["task"],
        )
        for task, count in sorted(publish_failures().items()):
            family.add_metric([task], count)
        return family
