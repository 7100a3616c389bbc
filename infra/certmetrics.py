"""The SMTP certificate's expiry as a Prometheus metric, read from its file at each scrape.

Read at each scrape, not at start-up: a renewed certificate (which the ingest
reloads without a restart) shows its new date at once, and a file that went
missing or unreadable shows as archiva_smtp_tls_certificate_readable 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric


def not_after(path: str) -> float:
    """Unix time at which the first certificate of the PEM file stops being valid (OSError, ValueError)."""
    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return certificate.not_valid_after_utc.timestamp()


class CertificateCollector:
    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("archiva_smtp_tls_certificate_not_after_timestamp_seconds", "", labels=["path"])
        yield GaugeMetricFamily("archiva_smtp_tls_certificate_readable", "", labels=["path"])

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily(
            "archiva_smtp_tls_certificate_readable",
            "1 when the STARTTLS certificate file can be read and parsed",
            labels=["path"],
        )
        try:
            expiry = not_after(self.path)
        except (OSError, ValueError):
            readable.add_metric([self.path], 0)
            yield readable
            return
        readable.add_metric([self.path], 1)
        yield readable
        family = GaugeMetricFamily(
            "archiva_smtp_tls_certificate_not_after_timestamp_seconds",
            "When the STARTTLS certificate expires (Unix time)",
            labels=["path"],
        )
        family.add_metric([self.path], expiry)
        yield family
