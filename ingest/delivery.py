"""A Delivery's life: every change of its status and of its enqueued mark.

stored ─(hash checked, parsed, merged)→ archived, its Message then indexed
   │                                   ↘ parse_failed (the report's own fault, with its reason)
   └─(stored bytes do not match)→ failed
`requeue_failures` puts parse_failed back to received and failed back to
stored (`manage.py retry_failed`).  Beside the status, `enqueued_at` says a
worker has the delivery: set once its task is published, or to when its
retry is due; the sweep publishes whatever nobody has (recently) been given.

The ingest never imports the archive: tasks are published by name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import OperationalError, connection
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from infra.storage import IntegrityError
from infra.text import storable_text
from ingest.models import Delivery
from ingest.originator import is_foreign, originator_org
from ingest.stats import count_publish_failure
from ingest.tuning import PUBLISH_CHUNK as PUBLISH_CHUNK  # re-exported: archive's retry_failed uses it

log = logging.getLogger(__name__)

PROCESS_TASK = "archive.tasks.process_deliveries"
INDEX_TASK = "archive.tasks.index_pending"
UNFINISHED = (Delivery.Status.STORED, Delivery.Status.RECEIVED)


# archive.models.Message.IndexStatus.PENDING: the ingest does not import the archive
# (tests/test_pipeline_names.py checks that the two agree).
INDEX_PENDING = "pending"


# --- publishing ----------------------------------------------------------------


def publish(
    task: str,
    args: tuple[object, ...] = (),
    countdown: float | None = None,
    kwargs: dict[str, object] | None = None,
) -> None:
    """Publish a task by name; raises on broker trouble, once the failure is
    counted (`ingest.stats.count_publish_failure`, served at /metrics).

    A connection a broker restart closed is replaced and the publish made
    again (CELERY_TASK_PUBLISH_RETRY_POLICY: a few attempts within seconds);
    a broker that stays away is the sweep's business."""
    try:
        current_app.send_task(task, args=args, kwargs=kwargs, countdown=countdown)
    except Exception:
        count_publish_failure(task)
        raise


def enqueue(delivery_ids: list[int]) -> bool:
    """Publish processing tasks, one per chunk of ids, and mark the deliveries
    enqueued once published; on broker trouble leave them for the sweep.
    True when every one was published."""
    if not delivery_ids:
        return True
    published: list[int] = []
    try:
        for start in range(0, len(delivery_ids), PUBLISH_CHUNK):
            chunk = delivery_ids[start : start + PUBLISH_CHUNK]
            publish(PROCESS_TASK, (chunk,))
            published += chunk
    except Exception:
        log.warning(
            "broker unavailable; %d deliveries left for the sweep", len(delivery_ids) - len(published), exc_info=True
        )
    mark_enqueued(published)
    return len(published) == len(delivery_ids)


def mark_enqueued(delivery_ids: list[int]) -> None:
    """Note that these deliveries' tasks are published: the sweep leaves them
    alone for ARCHIVA_REQUEUE_AFTER.  One UPDATE per published chunk, off the
    commit path (the publisher's thread)."""
    if not delivery_ids:
        return
    try:
        Delivery.objects.filter(pk__in=delivery_ids).update(enqueued_at=timezone.now())
    except Exception:
        # Published all the same: the sweep publishes them once more (harmless).
        log.warning("could not mark %d deliveries enqueued", len(delivery_ids), exc_info=True)


def mark_retry_due(delivery_ids: list[int], countdown: float) -> None:
    """A task retrying these deliveries is due in `countdown` seconds: the
    sweep republishes them only once that retry is ARCHIVA_REQUEUE_AFTER overdue."""
    try:
        due = timezone.now() + timedelta(seconds=countdown)
        Delivery.objects.filter(pk__in=delivery_ids).update(enqueued_at=due)
    except OperationalError:
        pass  # the database is the trouble; the sweep's window covers it


def publish_retry(delivery_ids: list[int], countdown: float) -> None:
    """Publish the processing of these deliveries again in `countdown` seconds
    (a batch's member that met our trouble goes on alone)."""
    publish(PROCESS_TASK, (delivery_ids,), countdown=countdown)
    mark_retry_due(delivery_ids, countdown)


def publish_indexing(countdown: float | None = None) -> bool:
    """Ask for an indexing run; False (and the waiting messages left to the
    next sweep, not the requeue window's) when the broker refuses."""
    try:
        publish(INDEX_TASK, countdown=countdown)
    except Exception:
        log.warning("could not schedule indexing; the next sweep will", exc_info=True)
        _mark_indexing_unscheduled()
        return False
    return True


def _mark_indexing_unscheduled() -> None:
    """Mark the archived reports of messages waiting to be indexed as not
    enqueued, so the next sweep schedules their indexing."""
    try:
        Delivery.objects.filter(
            status=Delivery.Status.ARCHIVED, message__index_status=INDEX_PENDING, enqueued_at__isnull=False
        ).update(enqueued_at=None)
    except Exception:
        log.warning("could not mark messages for the sweep; the requeue window covers them", exc_info=True)


# --- status changes ------------------------------------------------------------


def load(delivery_ids: list[int]) -> list[Delivery]:
    """These deliveries with their tenants, in id order (unknown ids left out, logged)."""
    deliveries = list(Delivery.objects.select_related("tenant").filter(pk__in=delivery_ids).order_by("pk"))
    for missing in set(delivery_ids) - {delivery.pk for delivery in deliveries}:
        log.warning("delivery %s does not exist", missing)
    return deliveries


def mark_attempt(deliveries: list[Delivery]) -> None:
    """Count a processing attempt of each delivery not yet archived (one UPDATE)."""
    ids = [delivery.pk for delivery in deliveries if delivery.status in UNFINISHED]
    if ids:
        Delivery.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1)


def read_verified(delivery: Delivery) -> bytes | None:
    """The report's bytes, checked against their hash; None (and the delivery
    marked failed, for good: the bytes will not change) when they do not match.
    Storage trouble (StorageError) passes through: retry later."""
    try:
        return delivery.read_report()
    except IntegrityError as exc:
        Delivery.objects.filter(pk=delivery.pk, status__in=UNFINISHED).update(
            status=Delivery.Status.FAILED, error=str(exc)
        )
        log.error("delivery %s failed verification: %s", delivery.pk, exc)
        delivery.status = Delivery.Status.FAILED
        return None


def note_originator(delivery: Delivery, raw: bytes) -> bool:
    """Set the report's X-OriginatorOrg, and whether it is another organization's,
    on `delivery` (saved with its outcome: archived or failed); True when flagged."""
    found = originator_org(raw)[:253]
    delivery.originator_org = found
    delivery.originator_mismatch = is_foreign(found, delivery.tenant.m365_organization)
    return delivery.originator_mismatch


def mark_parse_failed(delivery: Delivery, reason: str) -> None:
    """The parser raised on the report: kept, listed with its reason, run again by `retry_failed`."""
    log.error("delivery %s could not be parsed: %s", delivery.pk, reason)
    Delivery.objects.filter(pk=delivery.pk, message__isnull=True).update(
        status=Delivery.Status.PARSE_FAILED,
        error=storable_text(reason),  # an exception's text may quote the input
        originator_org=storable_text(delivery.originator_org),
        originator_mismatch=delivery.originator_mismatch,
    )
    delivery.status = Delivery.Status.PARSE_FAILED


def mark_archive_failed(delivery: Delivery, exc: Exception) -> None:
    """Archiving the report failed on its own, alone (our trouble is retried
    instead): listed with its reason on System Status beside the parse
    failures, and run again by `retry_failed`."""
    reason = f"could not be archived: {type(exc).__name__}: {exc}"[:2000]
    log.error("delivery %s %s", delivery.pk, reason, exc_info=exc)
    Delivery.objects.filter(pk=delivery.pk, message__isnull=True, status__in=UNFINISHED).update(
        status=Delivery.Status.PARSE_FAILED, error=storable_text(reason)
    )
    delivery.status = Delivery.Status.PARSE_FAILED


def mark_archived(deliveries: list[Delivery]) -> None:
    """Link each delivery to the Message set on it (`delivery.message`), inside
    the caller's transaction that created or merged those Messages."""
    now = timezone.now()
    rows = []
    for delivery in deliveries:
        delivery.status, delivery.error = Delivery.Status.ARCHIVED, ""
        delivery.verified_at = delivery.verified_at or now
        rows.append(
            (delivery.message_id, delivery.status, delivery.verified_at, delivery.originator_org,
             delivery.originator_mismatch, delivery.pk)
        )  # fmt: skip
    # One prepared statement for every row: bulk_update's CASE expressions
    # cost more to build than the whole rest of the batch.
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {Delivery._meta.db_table} SET message_id = %s, status = %s, error = '', verified_at = %s, "  # noqa: S608
            "originator_org = %s, originator_mismatch = %s WHERE id = %s",
            rows,
        )


def requeue_failures(deliveries: Iterable[Delivery]) -> list[int]:
    """Put failed reports back in line: parse failures to `received`, failed
    verifications to `stored` (the store may have been repaired)."""
    ids = [d.pk for d in deliveries]
    Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PARSE_FAILED).update(
        status=Delivery.Status.RECEIVED, error=""
    )
    Delivery.objects.filter(pk__in=ids, status=Delivery.Status.FAILED).update(status=Delivery.Status.STORED, error="")
    return ids


# --- the sweep -----------------------------------------------------------------


def requeue_after() -> timedelta:
    return timedelta(seconds=settings.ARCHIVA_REQUEUE_AFTER)


def not_given_out(now: datetime, grace: float | None = None, published_before: datetime | None = None) -> Q:
    """Rows (by their `received_at` and `enqueued_at`) that no worker has
    (recently) been given: the sweeps' condition, for deliveries and Graph
    notifications alike.

    Those never published are taken once `grace` seconds old (default
    ARCHIVA_SWEEP_GRACE: they are published within a fraction of a second);
    those published ARCHIVA_REQUEUE_AFTER ago (or whose retry is that
    overdue) are taken again, and with `published_before` (a worker that
    lost its broker connection) those published before then, whose tasks a
    broker restart may have lost.
    """
    window = timedelta(seconds=settings.ARCHIVA_SWEEP_GRACE if grace is None else grace)
    requeue = now - requeue_after()
    if published_before is not None:
        requeue = max(requeue, published_before)
    return Q(enqueued_at__isnull=True, received_at__lt=now - window) | Q(enqueued_at__lt=requeue)


def published_before_from(value: str | None) -> datetime | None:
    """The `published_before` a reconnecting worker passes its sweeps (ISO 8601
    with an offset, from `timezone.now().isoformat()`); ValueError for another form."""
    if not value:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"published_before must be an ISO 8601 date and time, not {value[:64]!r}") from exc
    if timezone.is_naive(instant):
        raise ValueError(f"published_before must carry its UTC offset: {value[:64]!r}")
    return instant


def stranded_deliveries(
    now: datetime | None = None, grace: float | None = None, published_before: datetime | None = None
) -> QuerySet[Delivery]:
    """Deliveries not yet archived and indexed that no worker has (recently)
    been given (`not_given_out`)."""
    unfinished = Q(status__in=UNFINISHED) | Q(status=Delivery.Status.ARCHIVED, message__index_status=INDEX_PENDING)
    return Delivery.objects.filter(unfinished).filter(not_given_out(now or timezone.now(), grace, published_before))


def sweep(limit: int = 10_000, grace: float | None = None, published_before: datetime | None = None) -> int:
    """Enqueue stranded deliveries; returns how many were published.

    Reports not yet archived get processing tasks; archived ones whose
    message waits to be indexed get one indexing run.  Each is marked
    enqueued only once its task is published.
    """
    due = stranded_deliveries(grace=grace, published_before=published_before)
    stranded = list(due.order_by("received_at").values_list("pk", "status")[:limit])
    if not stranded:
        return 0
    unarchived = [pk for pk, status in stranded if status != Delivery.Status.ARCHIVED]
    unindexed = [pk for pk, status in stranded if status == Delivery.Status.ARCHIVED]
    published = len(unarchived) if enqueue(unarchived) else 0
    if unindexed:
        try:
            publish(INDEX_TASK)
        except Exception:
            log.warning("broker unavailable; indexing left for the next sweep", exc_info=True)
        else:
            mark_enqueued(unindexed)
            published += len(unindexed)
    if published:
        log.info("sweep enqueued %d stranded deliveries", published)
    return published


def resend_retries(now: datetime | None = None, limit: int = 10_000) -> int:
    """Publish again the processing of deliveries whose retry is still due,
    each with what is left of its countdown; how many.

    A worker back on its broker calls this: a retry's task waits out its
    countdown in the broker (RabbitMQ) or held by a worker (Redis), and a
    restart may have lost it; the sweep would only take the delivery once
    its retry is ARCHIVA_REQUEUE_AFTER overdue.  A retry that survived runs
    as well, and the later of the two finds nothing left to do.  A fresh
    task counts its retries from zero."""
    now = now or timezone.now()
    due = Delivery.objects.filter(status__in=UNFINISHED, enqueued_at__gt=now).order_by("enqueued_at")
    by_countdown: dict[int, list[int]] = {}
    for pk, at in due.values_list("pk", "enqueued_at")[:limit]:
        if at is None:  # not by the filter; for the type checker
            continue
        by_countdown.setdefault(math.ceil((at - now).total_seconds()), []).append(pk)
    published = 0
    for countdown, ids in by_countdown.items():
        for start in range(0, len(ids), PUBLISH_CHUNK):
            # enqueued_at keeps the retry's due time: the sweep's window is unchanged.
            publish(PROCESS_TASK, (ids[start : start + PUBLISH_CHUNK],), countdown=countdown)
            published += len(ids[start : start + PUBLISH_CHUNK])
    return published


def sweep_at_start(who: str, published_before: datetime | None = None) -> int:
    """The sweep a starting ingest or worker runs once: whatever a crashed one
    recorded but never published is published at once (no grace: a
    duplicate of a task another process is publishing right now is harmless),
    instead of after the first sweep interval.  A worker back on its broker
    after losing it passes `published_before` (see `stranded_deliveries`),
    and publishes the retries still due again (`resend_retries`)."""
    try:
        published = sweep(grace=0, published_before=published_before)
        if published_before is not None:
            published += resend_retries()
    except Exception:
        log.warning("the start-up sweep of the %s failed; the periodic sweep will do it", who, exc_info=True)
        return 0
    if published:
        log.info("%s start-up: published %d deliveries left by a previous run", who, published)
    return published
