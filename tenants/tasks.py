"""Celery tasks of the tenants app: the audit log's linking sweep, daily root and verification."""

from __future__ import annotations

import logging

from celery import shared_task

from tenants import audit

log = logging.getLogger(__name__)


# Verifying reads every event of every tenant: far beyond the default 5-minute limit on a big deployment.
@shared_task(acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def audit_daily() -> int:
    """Record each tenant's daily audit root and verify its chain; how many chains are broken.

    Run twice in a day it records nothing new (the day's first root stays)
    and verifies again, which is harmless.
    """
    broken = 0
    for tenant, verdict in audit.daily_check():
        if not verdict.ok:
            broken += 1
            log.error(
                "audit chain of tenant %s is broken at event %s: %s", tenant.pk, verdict.broken_event_id, verdict.reason
            )
    return broken


@shared_task(acks_late=True)
def link_audit_events() -> int:
    """Link audit events a crash left pending between their commit and their
    linking (normally each is linked right after its commit); how many."""
    return audit.link_all_pending()
