"""The scrub's findings as Prometheus metrics, read from the database when /metrics is scraped.

Registered by the app (`ComplianceConfig.ready`), so the ingest's /metrics
serves them without the ingest importing compliance; the worker that runs
the scrub serves no metrics of its own, so counting in its memory would be lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from django.db import connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


class ScrubCollector:
    def describe(self) -> Iterator[Metric]:
        """The metric names, without a query: the registry asks at registration, before any database exists."""
        yield GaugeMetricFamily("archiva_storage_scrub_findings", "", labels=["problem"])
        yield CounterMetricFamily("archiva_storage_scrub_checked_objects", "")

    def collect(self) -> Iterator[Metric]:
        from compliance import scrub

        try:
            totals = scrub.totals()
        except Exception:  # whatever the database does, the ingest's own metrics must still be served
            log.warning("scrub metrics: the database did not answer", exc_info=True)
            return
        finally:
            if threading.current_thread() is not threading.main_thread():
                # prometheus_client serves each scrape in a thread of its own: its connection ends with it.
                connection.close()
        findings = GaugeMetricFamily(
            "archiva_storage_scrub_findings",
            "Stored objects found bad by the integrity scrub and not found intact since",
            labels=["problem"],
        )
        for problem in scrub.ScrubFinding.Problem:
            findings.add_metric([problem.value], totals[problem.value])
        yield findings
        yield CounterMetricFamily(
            "archiva_storage_scrub_checked_objects",
            "Stored objects read back and checked by the scrub",
            value=totals["checked"],
        )


_registered = False


def register() -> None:
    """Add the collector to the default registry, once per process (ready() can run again in tests)."""
    global _registered
    if not _registered:
        from prometheus_client import REGISTRY

        REGISTRY.register(ScrubCollector())
        _registered = True
