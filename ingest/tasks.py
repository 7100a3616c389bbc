"""Celery tasks of the ingest: they carry ids only and can run twice.

A delivery moves `stored` → `received` (hash verified) → `archived`
(unwrapped and merged into its Message), and its Message is then indexed.
Each step checks where the delivery is, so a task that runs again (a
retry, a duplicate from the sweep) picks up where the last one stopped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.db.models import Q
from django.utils import timezone

from infra.storage import IntegrityError, StorageError
from ingest.models import Delivery

log = logging.getLogger(__name__)

# A delivery is marked enqueued only once its task is published; one
# published ARCHIVA_REQUEUE_AFTER seconds ago and still not processed is
# published again (the task may have been lost with a crashed worker or
# broker).  A task that is retrying sets `enqueued_at` to when its retry is
# due, so the sweep leaves it alone until that retry is overdue too.


def requeue_after() -> timedelta:
    return timedelta(seconds=settings.ARCHIVA_REQUEUE_AFTER)


BACKOFF_FIRST = 5
BACKOFF_MAX = 600
# Messages archived within this many seconds are indexed in one batch: the
# price of batching is this much delay before a message is searchable.
INDEX_DELAY = 1.0
INDEX_BATCH = 500
INDEX_TIME_BUDGET = 60.0


def _retryable() -> tuple[type[Exception], ...]:
    from search.backends.base import SearchUnavailable

    # Our own trouble, not the message's: storage, the search backend, the database.
    return (StorageError, SearchUnavailable, OperationalError)


def backoff(retries: int) -> int:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s … capped at 10 minutes."""
    return random.randint(BACKOFF_FIRST, min(BACKOFF_MAX, BACKOFF_FIRST * 2**retries))


@shared_task(bind=True, max_retries=None, acks_late=True)
def process_delivery(self, delivery_id: int) -> str:
    """Verify and archive one delivery, then have its message indexed in the next batch.

    Retried with backoff on our own trouble (storage, database); never for
    the message's (a failed hash check, a parse failure, any other error
    archiving it: each recorded with its reason, shown on System Status).
    """
    try:
        status = process(delivery_id, index=False)
    except IntegrityError:
        raise  # handled in `verify`; never retried (the bytes will not change)
    except _retryable() as exc:
        _retry_later(self, exc, delivery_id)
    except Exception as exc:  # noqa: BLE001 - the report's own failure: recorded, not retried
        return _record_failure(delivery_id, exc)
    if status == Delivery.Status.ARCHIVED:
        schedule_indexing()
    return status


@shared_task(bind=True, acks_late=True)
def process_deliveries(self, delivery_ids: list[int]) -> int:
    """Several deliveries in one task (still ids only): the ingest publishes
    one task per commit batch.  New reports are archived together
    (`archive.actions.archive_batch`: one transaction, parallel stores);
    anything else, or a batch that fails for any reason but our own trouble
    (a concurrent merge, a value the database refuses), goes one by one, so
    one bad report never holds back another's.  A delivery that meets our own
    trouble goes on alone in `process_delivery` with its backoff; one that
    fails on its own is recorded with its reason.  Returns how many were archived."""
    from archive import actions

    batch, one_by_one = [], []
    for delivery in Delivery.objects.select_related("tenant").filter(pk__in=delivery_ids).order_by("pk"):
        if delivery.message_id or delivery.status not in (Delivery.Status.STORED, Delivery.Status.RECEIVED):
            one_by_one.append(delivery.pk)
            continue
        try:
            raw = delivery.read_report()
            parsed = actions.parse_delivery(delivery, raw)
        except IntegrityError:
            one_by_one.append(delivery.pk)  # `verify` records the failure
            continue
        except actions.ParseFailed as exc:
            actions.mark_parse_failed(delivery, str(exc))
            continue
        except _retryable() as exc:
            _retry_alone(delivery.pk, exc)
            continue
        except Exception:  # noqa: BLE001 - found out and recorded one by one
            one_by_one.append(delivery.pk)
            continue
        batch.append((delivery, parsed))
    archived = 0
    try:
        archived = actions.archive_batch(batch)
    except _retryable() as exc:
        for delivery, _ in batch:
            _retry_alone(delivery.pk, exc)
    except Exception as exc:  # noqa: BLE001 - BatchConflict, or one report's bad value: one by one
        if not isinstance(exc, actions.BatchConflict):
            log.warning("a batch of %d deliveries failed (%s); archiving them one by one", len(batch), exc)
        one_by_one += [delivery.pk for delivery, _ in batch]
    for delivery_id in one_by_one:
        try:
            status = process(delivery_id, index=False)
        except IntegrityError:
            continue  # recorded by `verify`; the bytes will not change
        except _retryable() as exc:
            _retry_alone(delivery_id, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - this report alone
            status = _record_failure(delivery_id, exc)
        archived += status == Delivery.Status.ARCHIVED
    if archived:
        schedule_indexing()
    return archived


def _record_failure(delivery_id: int, exc: Exception) -> str:
    from archive.actions import mark_archive_failed

    mark_archive_failed(delivery_id, exc)
    return Delivery.Status.PARSE_FAILED


def _retry_alone(delivery_id: int, exc: Exception) -> None:
    log.warning("delivery %s: %s; retrying on its own", delivery_id, exc)
    process_delivery.apply_async((delivery_id,), countdown=backoff(0), retry=False)


@shared_task(bind=True, max_retries=None, acks_late=True)
def index_pending(self) -> int:
    """Index every message waiting to be indexed, in batches (one commit each)."""
    from archive.actions import index_pending as index_batch

    deadline = time.monotonic() + INDEX_TIME_BUDGET
    total = 0
    try:
        while (done := index_batch(INDEX_BATCH)) and time.monotonic() < deadline:
            total += done
    except _retryable() as exc:
        _retry_later(self, exc)
    if done:  # the budget ran out with more waiting: carry on in a fresh task
        index_pending.apply_async(retry=False)
    return total + done


def _retry_later(task, exc: Exception, delivery_id: int | None = None):
    log.warning("%s: %s; retrying", f"delivery {delivery_id}" if delivery_id else task.name, exc)
    countdown = backoff(task.request.retries)
    if delivery_id is not None:
        try:
            # When the retry is due: the sweep republishes only once that is overdue.
            due = timezone.now() + timedelta(seconds=countdown)
            Delivery.objects.filter(pk=delivery_id).update(enqueued_at=due)
        except OperationalError:
            pass  # the database is the trouble; the sweep's window covers it
    raise task.retry(exc=exc, countdown=countdown) from exc


_next_schedule = 0.0
_schedule_lock = threading.Lock()


def schedule_indexing() -> None:
    """Ask for an `index_pending` run in INDEX_DELAY seconds, at most once per
    INDEX_DELAY per process: messages archived meanwhile go into one batch
    (an index commit costs far more than one message)."""
    global _next_schedule
    with _schedule_lock:
        now = time.monotonic()
        if now < _next_schedule:
            return
        _next_schedule = now + INDEX_DELAY
    try:
        index_pending.apply_async(countdown=INDEX_DELAY, retry=False)
    except Exception:
        log.warning("could not schedule indexing; the next sweep will", exc_info=True)
        _next_schedule = 0.0
        _unschedule_indexing()


def _unschedule_indexing() -> None:
    """Indexing could not be asked for: mark the archived reports of messages
    waiting for it as not enqueued, so the next sweep (not the requeue
    window's) schedules it."""
    from archive.models import Message

    try:
        Delivery.objects.filter(
            status=Delivery.Status.ARCHIVED,
            message__index_status=Message.IndexStatus.PENDING,
            enqueued_at__isnull=False,
        ).update(enqueued_at=None)
    except Exception:
        log.warning("could not mark messages for the sweep; the requeue window covers them", exc_info=True)


def process(delivery_id: int, index: bool = True) -> str:
    """Take a delivery as far as it goes; returns the status it ends in.

    With `index`, its message is indexed here and now (tools, tests);
    workers leave that to the batched `index_pending`.
    """
    from archive import actions

    delivery = Delivery.objects.select_related("tenant", "message").filter(pk=delivery_id).first()
    if delivery is None:
        log.warning("delivery %s does not exist", delivery_id)
        return "missing"
    if delivery.status in (Delivery.Status.STORED, Delivery.Status.RECEIVED):
        Delivery.objects.filter(pk=delivery.pk).update(attempts=delivery.attempts + 1)
    raw = None
    if delivery.status == Delivery.Status.STORED:
        raw = verify(delivery)
        if raw is None:
            return Delivery.Status.FAILED
    if delivery.status == Delivery.Status.RECEIVED:
        try:
            parsed = actions.parse_delivery(delivery, raw)
        except actions.ParseFailed as exc:
            actions.mark_parse_failed(delivery, str(exc))
            return Delivery.Status.PARSE_FAILED
        if actions.archive_delivery(delivery, parsed) is None:
            return Delivery.Status.PARSE_FAILED
    if delivery.status == Delivery.Status.ARCHIVED and index:
        assert delivery.message is not None  # archived: its message exists
        delivery.message.refresh_from_db()
        actions.index_message(delivery.message)
    return delivery.status


def verify(delivery: Delivery) -> bytes | None:
    """Check the stored object against its hash; mark the delivery received
    (returning the verified bytes, so they are read once) or failed (None)."""
    try:
        raw = delivery.read_report()
    except IntegrityError as exc:
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.STORED).update(
            status=Delivery.Status.FAILED, error=str(exc)
        )
        log.error("delivery %s failed verification: %s", delivery.pk, exc)
        return None
    Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.STORED).update(
        status=Delivery.Status.RECEIVED, verified_at=timezone.now(), error=""
    )
    delivery.status = Delivery.Status.RECEIVED
    return raw


def stranded_deliveries(now=None, grace: float | None = None):
    """Deliveries not yet archived and indexed that no worker has (recently) been given.

    Those never published are taken once `grace` seconds old (default
    ARCHIVA_SWEEP_GRACE: the ingest publishes within a fraction of a second);
    those published ARCHIVA_REQUEUE_AFTER ago (or whose retry is that
    overdue) are taken again.
    """
    from archive.models import Message

    now = now or timezone.now()
    window = timedelta(seconds=settings.ARCHIVA_SWEEP_GRACE if grace is None else grace)
    unfinished = Q(status__in=[Delivery.Status.STORED, Delivery.Status.RECEIVED]) | Q(
        status=Delivery.Status.ARCHIVED, message__index_status=Message.IndexStatus.PENDING
    )
    return Delivery.objects.filter(unfinished).filter(
        Q(enqueued_at__isnull=True, received_at__lt=now - window) | Q(enqueued_at__lt=now - requeue_after())
    )


def sweep(limit: int = 10_000, grace: float | None = None) -> int:
    """Enqueue stranded deliveries; returns how many were published.

    Reports not yet archived get processing tasks; archived ones whose
    message waits to be indexed get one indexing run.  Each is marked
    enqueued only once its task is published (`ingest.record.enqueue`).
    """
    from ingest.record import enqueue, mark_enqueued

    stranded = list(stranded_deliveries(grace=grace).order_by("received_at").values_list("pk", "status")[:limit])
    if not stranded:
        return 0
    unarchived = [pk for pk, status in stranded if status != Delivery.Status.ARCHIVED]
    unindexed = [pk for pk, status in stranded if status == Delivery.Status.ARCHIVED]
    published = len(unarchived) if enqueue(unarchived) else 0
    if unindexed:
        try:
            index_pending.apply_async(retry=False)
        except Exception:
            log.warning("broker unavailable; indexing left for the next sweep", exc_info=True)
        else:
            mark_enqueued(unindexed)
            published += len(unindexed)
    if published:
        log.info("sweep enqueued %d stranded deliveries", published)
    return published


def sweep_at_start(who: str) -> int:
    """The sweep a starting ingest or worker runs once: whatever a crashed one
    recorded but never published is published at once (no grace: a
    duplicate of a task another process is publishing right now is harmless),
    instead of after the first sweep interval."""
    try:
        published = sweep(grace=0)
    except Exception:
        log.warning("the start-up sweep of the %s failed; the periodic sweep will do it", who, exc_info=True)
        return 0
    if published:
        log.info("%s start-up: published %d deliveries left by a previous run", who, published)
    return published


@shared_task
def sweep_stranded(at_start: bool = False) -> int:
    return sweep_at_start("worker") if at_start else sweep()
