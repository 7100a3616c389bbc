"""GET /metrics: the region's pipeline in the Prometheus text format.

Protected by a bearer token (ARCHIVA_METRICS_TOKEN); without one configured,
only loopback clients are answered, since the figures name tenants (by public
id) and the web app faces the internet.
"""

from __future__ import annotations

import hmac
import ipaddress
import shutil
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from archive.metrics import PipelineCollector
from compliance.metrics import ScrubCollector
from infra.certmetrics import CertificateCollector


class DiskCollector:
    """Free space where this process keeps its data (spool, embedded stores)."""

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("archiva_disk_free_bytes", "", labels=["path"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "archiva_disk_free_bytes", "Free bytes on the data folder's filesystem", labels=["path"]
        )
        family.add_metric([str(settings.DATA_DIR)], shutil.disk_usage(settings.DATA_DIR).free)
        yield family


def registry() -> CollectorRegistry:
    collectors: list[object] = [PipelineCollector(), ScrubCollector(), DiskCollector()]
    if settings.ARCHIVA_TLS_CERT:
        collectors.append(CertificateCollector(settings.ARCHIVA_TLS_CERT))
    result = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        result.register(collector)  # type: ignore[arg-type]
    return result


def _allowed(request: HttpRequest) -> tuple[bool, str]:
    token = settings.ARCHIVA_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True, ""
        return False, "metrics: send Authorization: Bearer <ARCHIVA_METRICS_TOKEN>\n"
    try:
        loopback = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return True, ""
    return False, "metrics: only loopback clients may read /metrics until ARCHIVA_METRICS_TOKEN is set\n"


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    allowed, message = _allowed(request)
    if not allowed:
        status = 401 if settings.ARCHIVA_METRICS_TOKEN else 403
        response = HttpResponse(message, status=status, content_type="text/plain")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format (0.0.4), which every Prometheus 2.x parses.
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
