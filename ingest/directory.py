"""Journal token → tenant, cached in the ingest process.

RCPT must not cost a database query per recipient in a burst, yet a new or
rotated token (or a newly verified sender domain) must be seen within
seconds.  The directory loads every token once, then every
`ARCHIVA_TOKEN_CACHE_REFRESH` seconds reads only the tokens changed since
the last refresh (`updated_at` watermark) and all verified domains (they
are few), and reloads every token now and then to forget deleted tenants.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import close_old_connections
from django.utils import timezone

log = logging.getLogger(__name__)

FULL_RELOAD_EVERY = 60.0
# Rows committed slightly out of order with their updated_at stamps are
# still caught by overlapping the incremental window.
WATERMARK_OVERLAP = timedelta(seconds=30)


@dataclass(frozen=True)
class Route:
    """Where a journal recipient's mail goes."""

    tenant_id: int
    bucket: str
    region: str
    expires_at: datetime | None

    def valid(self) -> bool:
        """Not past its expiry; the clock is read only for a token that has one
        (a rotated token in its grace period): this runs for every RCPT."""
        return self.expires_at is None or self.expires_at > timezone.now()


def _route(tenant, expires_at: datetime | None = None) -> Route:
    return Route(tenant.id, tenant.bucket, tenant.region, expires_at)


class DirectoryUnavailable(Exception):
    """The directory has never loaded: answer 451, not 550."""


class TokenDirectory:
    def __init__(self, refresh_interval: float = 2.0):
        self.refresh_interval = refresh_interval
        self._routes: dict[str, Route] = {}
        self._domains: dict[str, Route] = {}
        self._loaded = False
        self._watermark: datetime | None = None
        self._last_full = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lookup(self, token: str) -> Route | None:
        if not self._loaded:
            raise DirectoryUnavailable("token directory not loaded yet")
        route = self._routes.get(token)
        if route is None or not route.valid():
            return None
        return route

    def lookup_domain(self, domain: str) -> Route | None:
        """The tenant that verified this sender domain (connector validation mail)."""
        if not self._loaded:
            raise DirectoryUnavailable("token directory not loaded yet")
        return self._domains.get(domain.lower())

    def refresh(self) -> None:
        """Load changes since the last refresh (everything, now and then)."""
        from tenants.models import Domain, JournalToken

        close_old_connections()
        started = timezone.now()
        full = not self._loaded or time.monotonic() - self._last_full > FULL_RELOAD_EVERY
        tokens = JournalToken.objects.select_related("tenant").only(
            "token", "expires_at", "updated_at", "tenant__id", "tenant__bucket", "tenant__region"
        )
        if not full:
            tokens = tokens.filter(updated_at__gte=self._watermark - WATERMARK_OVERLAP)
        fresh = {row.token: _route(row.tenant, row.expires_at) for row in tokens}
        # Verified domains are few: read them all every time, so a removed or
        # unverified domain is forgotten at once and another tenant's pending
        # claim on the same name never hides the verified one.
        domains = Domain.objects.filter(verified_at__isnull=False).select_related("tenant")
        domains = domains.only("name", "tenant__id", "tenant__bucket", "tenant__region")
        self._domains = {row.name.lower(): _route(row.tenant) for row in domains}
        if full:
            self._routes = fresh
            self._last_full = time.monotonic()
        else:
            self._routes.update(fresh)
        self._watermark = started
        self._loaded = True

    def start(self) -> None:
        """Load now (retrying until the database answers) and keep refreshing."""
        self._thread = threading.Thread(target=self._run, name="token-directory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from django.db import connections

        try:
            while not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:
                    log.warning("token directory refresh failed; serving the cached copy", exc_info=True)
                self._stop.wait(self.refresh_interval)
        finally:
            connections.close_all()
