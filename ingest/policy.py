"""Who may deliver, and how fast: defense in depth around the journal token.

The journal token is a bearer secret, so the ingest can also insist that
mail comes from Exchange Online's published sender networks, optionally
with forward-confirmed reverse DNS under outbound.protection.outlook.com.
Never SPF or DMARC: a journal report's envelope sender is the customer's
NDR mailbox, not an address Exchange Online is authorized to send for.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

from django.db import models
from django.utils import timezone

from infra.networks import in_networks, parse_networks

log = logging.getLogger(__name__)

# Exchange Online's outbound ranges (Microsoft 365 URLs and IP address ranges, ID 10).
EXCHANGE_ONLINE_NETWORKS = (
    "40.92.0.0/15",
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    "2a01:111:f400::/48",
    "2a01:111:f403::/48",
)
FCRDNS_SUFFIX = ".outbound.protection.outlook.com"


class SenderNetwork(models.Model):
    """A network allowed to deliver to this region's ingest (when the list is on)."""

    cidr = models.CharField(max_length=64, unique=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "ingest"

    def __str__(self) -> str:
        return self.cidr


class SenderAllowList:
    """The allowed networks, loaded from the database (built-in defaults when empty)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._networks = parse_networks(EXCHANGE_ONLINE_NETWORKS)

    def reload(self) -> None:
        if not self.enabled:
            return
        rows = list(SenderNetwork.objects.values_list("cidr", flat=True))
        self._networks = parse_networks(rows or EXCHANGE_ONLINE_NETWORKS)

    def allows(self, ip: str | None) -> bool:
        return not self.enabled or in_networks(ip, self._networks)


class FCrDNS:
    """Forward-confirmed reverse DNS under a suffix, with a small cache."""

    def __init__(self, enabled: bool, suffix: str = FCRDNS_SUFFIX, ttl: float = 300.0):
        self.enabled = enabled
        self.suffix = suffix.lower()
        self.ttl = ttl
        self._cache: dict[str, tuple[float, bool]] = {}

    def cached(self, ip: str | None) -> bool | None:
        """The answer without asking DNS: True when off, None when `confirms` must ask."""
        if not self.enabled:
            return True
        if ip is None:
            return False
        cached = self._cache.get(ip)
        return cached[1] if cached and cached[0] > time.monotonic() else None

    def confirms(self, ip: str | None) -> bool:
        """Blocking (DNS); call from a thread.  False also when DNS fails."""
        known = self.cached(ip)
        if known is not None:
            return known
        assert ip is not None  # cached() answers for no address
        result = self._lookup(ip)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[ip] = (time.monotonic() + self.ttl, result)
        return result

    def _lookup(self, ip: str) -> bool:
        import dns.exception
        import dns.resolver
        import dns.reversename

        from infra.dns import resolver

        res = resolver()
        try:
            names = [str(r.target).rstrip(".").lower() for r in res.resolve(dns.reversename.from_address(ip), "PTR")]
            for name in names:
                if not name.endswith(self.suffix):
                    continue
                rdtype = "AAAA" if ":" in ip else "A"
                forward = {str(r.address) for r in res.resolve(name, rdtype)}
                if ipaddress.ip_address(ip) in {ipaddress.ip_address(a) for a in forward}:
                    return True
        except (dns.exception.DNSException, ValueError):
            log.info("forward-confirmed reverse DNS failed for %s", ip, exc_info=True)
        return False


class RateLimiter:
    """Token buckets per key (tenant, peer): `rate` per second, bursts of `burst`."""

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self._buckets: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            return True
