"""The worker's Celery tasks: ids only, thin, safe to run twice.

`process_deliveries` takes deliveries through `archive.processing`;
`index_pending` drains the indexing backlog in batches; `sweep_stranded`
is `ingest.delivery.sweep`.  The ingest publishes them by name.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, NoReturn

from celery import shared_task
from django.conf import settings

from archive import actions, processing
from ingest import delivery as lifecycle

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger(__name__)

BACKOFF_FIRST = 5
BACKOFF_MAX = 600
# index_pending's commit interval and batch are settings (ARCHIVA_INDEX_DELAY,
# ARCHIVA_INDEX_BATCH): bench/capacity.py turns them.
INDEX_TIME_BUDGET = 60.0


def backoff(retries: int) -> int:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s … capped at 10 minutes."""
    return random.randint(BACKOFF_FIRST, min(BACKOFF_MAX, BACKOFF_FIRST * 2**retries))


@shared_task(bind=True, max_retries=None, acks_late=True)
def process_deliveries(self: Task, delivery_ids: list[int]) -> int:
    """Verify and archive deliveries (one, or the ingest's publishing chunk)
    and index the messages they created; the rest (merges, mailbox copies)
    go in the next `index_pending` batch.  Returns how many were archived.

    A delivery that meets our own trouble (storage, database, search) is
    retried with backoff: alone, in this task's retry when it was the task's
    only one, else in a task of its own.  The message's own failures are
    recorded with their reason (System Status) and never retried.
    """
    result = processing.process_deliveries(delivery_ids, index_new=True)
    if result.index_later:
        schedule_indexing()
    if len(delivery_ids) == 1 and result.troubled:
        [(delivery_id, exc)] = result.troubled.items()
        _retry_later(self, exc, [delivery_id])
    for delivery_id, exc in result.troubled.items():
        log.warning("delivery %s: %s; retrying on its own", delivery_id, exc)
        lifecycle.publish_retry([delivery_id], backoff(0))
    return result.archived


@shared_task(bind=True, max_retries=None, acks_late=True)
def index_pending(self: Task) -> int:
    """Index every message waiting to be indexed, in batches (one commit each)."""
    deadline = time.monotonic() + INDEX_TIME_BUDGET
    total = 0
    try:
        while (done := actions.index_pending(settings.ARCHIVA_INDEX_BATCH)) and time.monotonic() < deadline:
            total += done
    except processing.retryable() as exc:
        _retry_later(self, exc)
    if done:  # the budget ran out with more waiting: carry on in a fresh task
        lifecycle.publish_indexing()
    return total + done


@shared_task
def sweep_stranded(at_start: bool = False, published_before: str | None = None) -> int:
    """The periodic sweep; `at_start` (a worker started or got its broker
    back), the start-up one, which with `published_before` (ISO 8601) also
    publishes again what was published before the broker connection was lost."""
    if not at_start:
        return lifecycle.sweep()
    return lifecycle.sweep_at_start("worker", published_before=lifecycle.published_before_from(published_before))


def _retry_later(task: Task, exc: Exception, delivery_ids: list[int] | None = None) -> NoReturn:
    log.warning("%s: %s; retrying", f"deliveries {delivery_ids}" if delivery_ids else task.name, exc)
    countdown = backoff(task.request.retries)
    if delivery_ids:
        lifecycle.mark_retry_due(delivery_ids, countdown)
    raise task.retry(exc=exc, countdown=countdown) from exc


_next_schedule = 0.0
_schedule_lock = threading.Lock()


def schedule_indexing() -> None:
    """Ask for an `index_pending` run in ARCHIVA_INDEX_DELAY seconds, at most once
    per that delay per process: messages archived meanwhile go into one batch
    (an index commit costs far more than one message)."""
    global _next_schedule
    delay = settings.ARCHIVA_INDEX_DELAY
    with _schedule_lock:
        now = time.monotonic()
        if now < _next_schedule:
            return
        _next_schedule = now + delay
    if not lifecycle.publish_indexing(countdown=delay):
        _next_schedule = 0.0
