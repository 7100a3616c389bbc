"""The storage integrity scrub: re-read every stored object, check it against the SHA-256 the database holds.

What the database vouches for in a tenant's bucket:
- each Delivery's report (journal report or mailbox item): `size` bytes
  from `storage_offset` of `storage_key` (several reports share one pack
  object, each checked on its own range), against `Delivery.sha256`;
- each Message's own objects (`archive.actions._object_fields`): the
  original, the decrypted copy when there is one, and the extracted text.

A tenant's objects are covered once per ARCHIVA_SCRUB_PERIOD days: each run
checks the share of them that the time since its last run is of the
period, continuing from where the last run stopped (deliveries by id, then
messages), so a missed day is caught up by the next run.  A bad object is a
ScrubFinding until a later check finds it intact again; System Status and
the metrics show the open ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import models
from django.utils import timezone

from archive import access as archive_access
from archive.documents import OBJECTS
from infra.storage import BlobStore, IntegrityError, StorageError, get_store
from tenants.models import Tenant

log = logging.getLogger(__name__)

BATCH = 500
FIRST_RUN = dt.timedelta(days=1)  # a tenant never scrubbed gets a day's share, like any daily run


class ScrubState(models.Model):
    """Where a tenant's scrub cycle stands: the next objects to check and what the runs found."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="scrub_state")
    cycle_started_at = models.DateTimeField(null=True, blank=True)
    last_cycle_completed_at = models.DateTimeField(null=True, blank=True)
    delivery_cursor = models.BigIntegerField(default=0)  # the last Delivery id checked in this cycle
    message_cursor = models.BigIntegerField(default=0)  # the last Message id checked in this cycle
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run_checked = models.BigIntegerField(default=0)  # objects read by the last run
    checked_total = models.BigIntegerField(default=0)  # objects read since the tenant's first run

    def __str__(self) -> str:
        return f"scrub of tenant {self.tenant_id}: {self.checked_total} objects checked"


class ScrubFinding(models.Model):
    """An object whose bytes did not match the database's SHA-256, or that was missing or unreadable.

    Open (`resolved_at` empty) until a later check finds it intact; kept afterwards as history.
    """

    class Problem(models.TextChoices):
        MISMATCH = "mismatch", "content does not match its SHA-256"
        MISSING = "missing", "object missing"
        UNREADABLE = "unreadable", "could not be read"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="scrub_findings")
    problem = models.CharField(max_length=16, choices=Problem.choices)
    key = models.CharField(max_length=255)
    offset = models.BigIntegerField(default=0)
    size = models.BigIntegerField(null=True, blank=True)  # None: the whole object
    sha256 = models.CharField(max_length=64)  # what the database holds
    # What holds the hash (plain ids: a finding must not stop retention from deleting the row).
    delivery_id = models.BigIntegerField(null=True, blank=True)
    message_id = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    found_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "resolved_at"], name="scrub_finding_open")]

    def __str__(self) -> str:
        return f"{self.problem}: {self.key} of tenant {self.tenant_id}"


@dataclass(frozen=True)
class StoredObject:
    """One thing the database vouches for: a key (and range) and its SHA-256, with its owner row."""

    key: str
    sha256: str
    offset: int = 0
    size: int | None = None
    delivery_id: int | None = None
    message_id: int | None = None


@dataclass
class RunResult:
    checked: int = 0
    problems: list[ScrubFinding] = field(default_factory=list)
    cycle_completed: bool = False


def delivery_objects(tenant: Tenant, after: int, limit: int) -> list[tuple[int, list[StoredObject]]]:
    rows = (
        archive_access.deliveries(tenant)
        .filter(pk__gt=after)
        .order_by("pk")
        .values_list("pk", "storage_key", "sha256", "storage_offset", "size")[:limit]
    )
    return [(pk, [StoredObject(key, sha, offset, size, delivery_id=pk)]) for pk, key, sha, offset, size in rows]


def message_objects(tenant: Tenant, after: int, limit: int) -> list[tuple[int, list[StoredObject]]]:
    """Each message's objects (original, decrypted copy, text): whole objects or ranges of a pack."""
    columns = [f"{name}_{column}" for name in OBJECTS for column in ("key", "sha256", "offset", "size")]
    rows = archive_access.messages(tenant).filter(pk__gt=after).order_by("pk").values_list("pk", *columns)[:limit]
    found = []
    for pk, *values in rows:
        objects = []
        for n in range(0, len(values), 4):
            key, sha, offset, size = values[n : n + 4]
            if key and sha:
                objects.append(StoredObject(key, sha, offset or 0, size, message_id=pk))
        found.append((pk, objects))
    return found


def check_object(store: BlobStore, bucket: str, obj: StoredObject) -> tuple[str, str] | None:
    """None when the object reads back with its hash; otherwise (problem, error)."""
    try:
        store.verify(bucket, obj.key, obj.sha256, obj.offset, obj.size)
        return None
    except IntegrityError as exc:
        return ScrubFinding.Problem.MISMATCH, str(exc)
    except StorageError as exc:
        try:
            exists = store.exists(bucket, obj.key)
        except StorageError:
            exists = True  # the store itself is not answering: unreadable, not proven missing
        return (ScrubFinding.Problem.UNREADABLE if exists else ScrubFinding.Problem.MISSING), str(exc)


def note(
    tenant: Tenant,
    obj: StoredObject,
    outcome: tuple[str, str] | None,
    now: dt.datetime,
    open_: set[tuple[str, int, str]],
) -> ScrubFinding | None:
    """Record a check's outcome: open or refresh a finding, or close the open one of an object found intact.

    `open_` holds (key, offset, sha256) of the tenant's open findings, so an
    intact object (nearly all of them) costs no query.
    """
    if outcome is None and (obj.key, obj.offset, obj.sha256) not in open_:
        return None
    same = ScrubFinding.objects.filter(
        tenant=tenant, key=obj.key, offset=obj.offset, sha256=obj.sha256, resolved_at__isnull=True
    )
    if outcome is None:
        same.update(resolved_at=now)
        open_.discard((obj.key, obj.offset, obj.sha256))
        return None
    problem, error = outcome
    finding = same.first()
    if finding is None:
        finding = ScrubFinding(
            tenant=tenant,
            key=obj.key,
            offset=obj.offset,
            size=obj.size,
            sha256=obj.sha256,
            delivery_id=obj.delivery_id,
            message_id=obj.message_id,
            found_at=now,
        )
    finding.problem, finding.error, finding.last_seen_at = problem, error[:2000], now
    finding.save()
    open_.add((obj.key, obj.offset, obj.sha256))
    log.error("scrub: %s in tenant %s: %s", problem, tenant.pk, error)
    return finding


def still_vouched_for(tenant: Tenant, obj: StoredObject) -> bool:
    """Whether the row that holds the object's hash still exists, asked only of a bad object."""
    if obj.delivery_id is not None:
        return archive_access.deliveries(tenant).filter(pk=obj.delivery_id).exists()
    if obj.message_id is not None:
        return archive_access.messages(tenant).filter(pk=obj.message_id).exists()
    return True


def stop_if_store_down(store: BlobStore, state: ScrubState) -> None:
    """After an unreadable object: if the store itself stopped answering, keep the progress and raise StorageError."""
    try:
        store.ping()
    except StorageError:
        state.save(update_fields=["delivery_cursor", "message_cursor", "cycle_started_at"])
        raise


def budget(state: ScrubState, total: int, now: dt.datetime, period: dt.timedelta) -> int:
    """How many rows this run checks: the share of the period since the last run, at least one."""
    elapsed = now - state.last_run_at if state.last_run_at else FIRST_RUN
    return max(1, min(total, math.ceil(total * (elapsed / period))))


def rows_in_order(tenant: Tenant, state: ScrubState) -> Iterator[tuple[str, int, list[StoredObject]]]:
    """The rest of this cycle's rows from the cursors on: deliveries by id, then messages by id."""
    for kind, fetch in (("delivery", delivery_objects), ("message", message_objects)):
        after = state.delivery_cursor if kind == "delivery" else state.message_cursor
        while True:
            batch = fetch(tenant, after, BATCH)
            if not batch:
                break
            for pk, objects in batch:
                yield kind, pk, objects
            after = batch[-1][0]


def scrub_tenant(
    tenant: Tenant, *, whole: bool = False, now: dt.datetime | None = None, store: BlobStore | None = None
) -> RunResult:
    """Check this run's slice of the tenant's objects (`whole`: every object, a full cycle now)."""
    now = now or timezone.now()
    store = store or get_store()
    state, _ = ScrubState.objects.get_or_create(tenant=tenant)
    if whole:
        state.delivery_cursor = state.message_cursor = 0
        state.cycle_started_at = None
    total = archive_access.deliveries(tenant).count() + archive_access.messages(tenant).count()
    rows = total if whole else budget(state, total, now, dt.timedelta(days=settings.ARCHIVA_SCRUB_PERIOD))
    if state.cycle_started_at is None:
        state.cycle_started_at = now
    store.ping()  # a store that does not answer is an outage to retry, not a bucket full of findings
    result = RunResult()
    open_ = set(open_findings(tenant).values_list("key", "offset", "sha256"))
    done = 0
    for kind, pk, objects in rows_in_order(tenant, state):
        if done >= rows:
            break
        for obj in objects:
            outcome = check_object(store, tenant.bucket, obj)
            if outcome is not None and outcome[0] == ScrubFinding.Problem.UNREADABLE:
                stop_if_store_down(store, state)
            result.checked += 1
            if outcome is not None and not still_vouched_for(tenant, obj):
                continue  # deleted meanwhile (retention): its objects may go with it
            finding = note(tenant, obj, outcome, now, open_)
            if finding is not None:
                result.problems.append(finding)
        if kind == "delivery":
            state.delivery_cursor = pk
        else:
            state.message_cursor = pk
        done += 1
        if done % BATCH == 0:  # a run cut short (a deploy, the time limit) goes on from here next time
            state.save(update_fields=["delivery_cursor", "message_cursor", "cycle_started_at"])
    else:
        # The cycle's last row is checked: the next run starts over.
        result.cycle_completed = True
        state.delivery_cursor = state.message_cursor = 0
        state.last_cycle_completed_at, state.cycle_started_at = now, None
    state.last_run_at, state.last_run_checked = now, result.checked
    state.checked_total += result.checked
    state.save()
    return result


def open_findings(tenant: Tenant) -> models.QuerySet[ScrubFinding]:
    """The tenant's objects found bad and not found intact since, newest first."""
    return ScrubFinding.objects.filter(tenant=tenant, resolved_at__isnull=True).order_by("-found_at", "-id")


def state_of(tenant: Tenant) -> ScrubState | None:
    return ScrubState.objects.filter(tenant=tenant).first()


def totals() -> dict[str, int]:
    """Open findings by problem across tenants, and objects checked, for the metrics."""
    counts = dict(
        ScrubFinding.objects.filter(resolved_at__isnull=True)
        .values_list("problem")
        .annotate(n=models.Count("id"))
        .values_list("problem", "n")
    )
    checked = ScrubState.objects.aggregate(n=models.Sum("checked_total"))["n"] or 0
    return {**{p.value: counts.get(p.value, 0) for p in ScrubFinding.Problem}, "checked": checked}
