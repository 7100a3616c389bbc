"""Journal token → tenant, cached in the ingest process.

RCPT must not cost a database query per recipient in a burst, yet a new or
rotated token (or a newly verified sender domain) must be seen within
seconds.  The directory loads every token once, then every
`ARCHIVA_TOKEN_CACHE_REFRESH` seconds reads only the tokens changed since
the last refresh (`updated_at` watermark) and all verified domains (they
are few), and reloads every token now and then to forget deleted tenants.

A token issued since the last refresh (a sign-up or a rotation a second
ago) is not in the cache yet: for a well-formed token the cache does not
know, the router asks the database once (`fetch`, in a thread, off the
event loop) before answering 550, and remembers a token that is not there
for NEGATIVE_TTL seconds (at most NEGATIVE_MAX of them), so a sender
repeating one unknown address costs no query.  Guessing many addresses is
limited per peer by the router (see ingest.smtp.Router).  A validation
mail's sender domain the cache does not know is looked up the same way
(`fetch_domain`) before the mail is held for want of a verified domain.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import close_old_connections, connections
from django.utils import timezone

from ingest.tuning import FULL_RELOAD_EVERY, NEGATIVE_MAX, NEGATIVE_TTL, WATERMARK_OVERLAP

if TYPE_CHECKING:
    from tenants.models import Tenant

log = logging.getLogger(__name__)


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


def _route(tenant: Tenant, expires_at: datetime | None = None) -> Route:
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
        self._missing: dict[str, float] = {}  # token -> until when it is known to be missing (monotonic)

    @property
    def loaded(self) -> bool:
        """Whether the first full load is done (before it, lookups raise DirectoryUnavailable)."""
        return self._loaded

    def lookup(self, token: str) -> Route | None:
        if not self._loaded:
            raise DirectoryUnavailable("token directory not loaded yet")
        route = self._routes.get(token)
        if route is None or not route.valid():
            return None
        return route

    def known_missing(self, token: str) -> bool:
        """The database did not have this token a moment ago (see `fetch`)."""
        until = self._missing.get(token)
        return until is not None and until > time.monotonic()

    def fetch_domain(self, domain: str) -> Route | None:
        """The tenant that verified this sender domain, from the database (in a thread, like `fetch`):
        validation mail sent a moment after the domain's verification goes to its tenant, not on hold."""
        from tenants.models import Domain

        try:
            close_old_connections()
            row = (
                Domain.objects.filter(name=domain.lower(), verified_at__isnull=False)
                .select_related("tenant")
                .only("name", "tenant__id", "tenant__bucket", "tenant__region")
                .first()
            )
        except Exception as exc:
            log.warning("domain lookup failed: %s", exc)
            raise DirectoryUnavailable("domain lookup failed") from exc
        finally:
            connections.close_all()
        if row is None:
            return None
        route = self._domains[row.name.lower()] = _route(row.tenant)
        return route

    def fetch(self, token: str) -> Route | None:
        """The token's route from the database, for a token the cache does not know.

        Runs in a thread (a query must not block the event loop); a token
        found joins the cache, one not found is remembered as missing for
        NEGATIVE_TTL seconds.  Raises DirectoryUnavailable if the database
        does not answer (451, not 550).
        """
        from tenants.models import JournalToken

        try:
            close_old_connections()
            row = (
                JournalToken.objects.select_related("tenant")
                .only("token", "expires_at", "tenant__id", "tenant__bucket", "tenant__region")
                .filter(token=token)
                .first()
            )
        except Exception as exc:
            log.warning("token lookup failed: %s", exc)
            raise DirectoryUnavailable("token lookup failed") from exc
        finally:
            connections.close_all()  # this thread's: an executor thread keeps no connection between misses
        if row is None:
            if len(self._missing) >= NEGATIVE_MAX:
                self._missing = {}
            self._missing[token] = time.monotonic() + NEGATIVE_TTL
            return None
        route = self._routes[token] = _route(row.tenant, row.expires_at)
        return route if route.valid() else None

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
            assert self._watermark is not None  # set by the first, full, load
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
