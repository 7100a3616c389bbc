"""Celery tasks of the Microsoft 365 connection and its import: ids only, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from . import access, import_actions, importer
from .connection import check_connection

log = logging.getLogger(__name__)
SLICE_PAUSE = 5.0  # seconds between two slices of one import


@shared_task(acks_late=True)
def sync_directories() -> int:
    """The daily test of every configured connection; how many passed.

    A passing test reads the organization, the verified domains and the
    mailbox list again (with members' aliases); a failing one (a revoked
    consent, an expired certificate) is stored for the page like a test by
    hand and does not stop the others.
    """
    passed = 0
    for connection_id in access.connections_to_check():
        connection = access.connection_by_id(connection_id)
        result = check_connection(connection)
        if result.ok:
            passed += 1
        else:
            log.warning("m365 connection of tenant %s failed its daily test: %s", connection.tenant_id, result.error)
    return passed


# A slice stops starting batches after importer.TIME_BUDGET; the limits leave the batch in hand time to end.
@shared_task(acks_late=True, soft_time_limit=importer.TIME_BUDGET + 240, time_limit=importer.TIME_BUDGET + 300)
def run_import(run_id: int) -> bool | None:
    """Run an import for one time slice (claimed by heartbeat: a second copy of
    this task does nothing), then have a fresh task go on if there is more."""
    finished = importer.run_slice(run_id)
    if finished is False:
        # A short pause between slices: a slice that could not start (Graph unreachable) is never a tight loop.
        import_actions.publish_run(run_id, countdown=SLICE_PAUSE)
    return finished


@shared_task
def resume_stale_imports() -> int:
    """Imports whose worker died (or whose task was lost) go on: periodic, and at a worker's start."""
    return import_actions.resume_stale()
