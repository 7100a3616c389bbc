"""The worker's tasks of the Microsoft 365 import: ids only, thin, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from m365 import import_actions, importer

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def run_import(run_id: int) -> bool | None:
    """Run an import for one time slice (claimed by heartbeat: a second copy of
    this task does nothing), then have a fresh task go on if there is more."""
    finished = importer.run_slice(run_id)
    if finished is False:
        import_actions.publish_run(run_id)
    return finished


@shared_task
def resume_stale_imports() -> int:
    """Imports whose worker died (or whose task was lost) go on: periodic, and at a worker's start."""
    return import_actions.resume_stale()
