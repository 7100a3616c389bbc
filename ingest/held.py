"""The region's holding area: mail the ingest accepts for no tenant (yet).

Two kinds of mail arrive on the journal domain without a tenant to own them:

- the Exchange connector's validation mail to `archive@archive.<site>`,
  sent while the admin creates the connector, usually before the sender's
  domain is verified here: accepted, held, and moved into the tenant's
  archive when that tenant verifies the domain (`release_validation_mail`),
  or deleted after HOLD_DAYS;
- mail to `postmaster` (RFC 5321 §4.5.1): accepted, held, and delivered to
  the operator by a worker task (`deliver_held`, see ingest/postmaster.py):
  to `ARCHIVA_POSTMASTER` through Django's mail backend, or, on the
  embedded default, as an .eml file in the outbox folder.

Held mail goes through the committer like any message (in a pack, one
flush, recorded, then 250), into a bucket of the region that no tenant
owns (`held_bucket()`: `held` beside the tenant folders, `<prefix>held` on
S3), with a HeldMessage row per message.  The router marks it with a
negative tenant id (HELD_VALIDATION, HELD_POSTMASTER), which is never a
Tenant's: the committer records those as HeldMessage rows, never as
Deliveries, so nothing held is visible to a tenant before it is released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models, transaction
from django.db.models import Max
from django.utils import timezone

from infra.storage import StorageError, get_store, raw_key
from ingest.directory import Route
from tenants.models import Tenant

if TYPE_CHECKING:
    from ingest.record import Envelope
    from tenants.models import Domain

log = logging.getLogger(__name__)

HELD_VALIDATION = -1  # the route's tenant id of validation mail from an unverified domain
HELD_POSTMASTER = -2  # … of mail to postmaster
HOLD_DAYS = 14  # held validation mail nobody claimed is deleted after this
# What `verify_domain` moves at once (a web request); anything beyond is the
# periodic task's (a worker): a validation mail is a few KB, but anyone may
# send mail "from" a domain before it is verified.
RELEASE_NOW_COUNT = 20
RELEASE_NOW_SIZE = 1 << 20
# The periodic task leaves rows this young to the committer's own publish.
TEND_GRACE = timedelta(seconds=60)


class HeldMessage(models.Model):
    """A message accepted for no tenant, stored in the region's holding area."""

    class Kind(models.TextChoices):
        VALIDATION = "validation", "connector validation mail"
        POSTMASTER = "postmaster", "mail to postmaster"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    queue_id = models.CharField(max_length=32)
    mail_from = models.CharField(max_length=512, blank=True)
    sender_domain = models.CharField(max_length=253, blank=True, db_index=True)
    rcpt_to = models.JSONField(default=list)
    peer_ip = models.GenericIPAddressField(null=True, blank=True)
    helo = models.CharField(max_length=255, blank=True)
    tls_version = models.CharField(max_length=32, blank=True)
    tls_cipher = models.CharField(max_length=128, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The bytes: `size` bytes at `storage_offset` of `storage_key` in held_bucket().
    storage_key = models.CharField(max_length=255)
    storage_offset = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    # Moved into a tenant's archive (validation) or delivered to the operator (postmaster).
    released_at = models.DateTimeField(null=True, blank=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)

    class Meta:
        app_label = "ingest"
        constraints = [models.UniqueConstraint(fields=["queue_id", "kind"], name="one_held_message_per_kind")]

    def __str__(self) -> str:
        return f"held {self.kind} {self.queue_id} from {self.sender_domain or '<>'}"

    def read(self) -> bytes:
        """The message as received, checked against `sha256`."""
        return get_store().read_verified(held_bucket(), self.storage_key, self.sha256, self.storage_offset, self.size)


KINDS = {HELD_VALIDATION: HeldMessage.Kind.VALIDATION, HELD_POSTMASTER: HeldMessage.Kind.POSTMASTER}


def held_bucket() -> str:
    """The region's bucket that no tenant owns (tenant buckets end in a public id)."""
    prefix = settings.ARCHIVA_S3_BUCKET_PREFIX if settings.ARCHIVA_STORAGE == "s3" else ""
    return f"{prefix}held"


def held_route(kind: int, region: str) -> Route:
    return Route(kind, held_bucket(), region, None)


def is_held(tenant_id: int) -> bool:
    return tenant_id < 0


# --- the holding area's bucket ---------------------------------------------------

_ready: set[str] = set()
_ready_lock = threading.Lock()


def ensure_bucket() -> None:
    """Create the holding area's bucket once per process (the committer, before its first held message)."""
    bucket = held_bucket()
    if bucket in _ready:
        return
    with _ready_lock:
        # Not versioned, unlike a tenant's: a released or expired copy is really deleted.
        get_store().create_bucket(bucket, versioned=False)
        _ready.add(bucket)


def _delete_object(key: str) -> None:
    get_store().delete(held_bucket(), key)


def delete_unreferenced(keys: Iterable[str]) -> None:
    """Delete the objects no held message waits on any more (a pack holds a batch's held mail)."""
    keys = set(keys)
    waiting = set(
        HeldMessage.objects.filter(storage_key__in=keys, released_at__isnull=True).values_list("storage_key", flat=True)
    )
    for key in keys - waiting:
        try:
            _delete_object(key)
        except StorageError:
            log.warning("could not delete held object %s; the daily purge tries again", key, exc_info=True)


# --- recording (the committer) ---------------------------------------------------


def held_rows(
    envelope: Envelope, queue_id: str, sha256: str, size: int, placement: dict[int, tuple[str, int]], now: datetime
) -> list[HeldMessage]:
    """A message's HeldMessage rows (none for plain journal mail): `placement` as for its Deliveries."""
    rows = []
    for route, recipients in envelope.routes.values():
        if not is_held(route.tenant_id):
            continue
        sender_domain = envelope.mail_from.rpartition("@")[2].lower().rstrip(".") if "@" in envelope.mail_from else ""
        key, offset = placement[route.tenant_id]
        rows.append(
            HeldMessage(
                kind=KINDS[route.tenant_id],
                queue_id=queue_id,
                mail_from=envelope.mail_from[:512],
                sender_domain=sender_domain[:253],
                rcpt_to=recipients,
                peer_ip=envelope.peer_ip,
                helo=envelope.helo[:255],
                tls_version=envelope.tls_version,
                tls_cipher=envelope.tls_cipher,
                received_at=now,
                storage_key=key,
                storage_offset=offset,
                sha256=sha256,
                size=size,
            )
        )
    return rows


def record(rows: list[HeldMessage]) -> None:
    """Insert held rows (inside the committer's transaction); postmaster mail is handed to a worker after it commits."""
    HeldMessage.objects.bulk_create(rows)
    postmaster = [row.pk for row in rows if row.kind == HeldMessage.Kind.POSTMASTER and row.pk is not None]
    if postmaster:
        transaction.on_commit(lambda: _publish_soon(postmaster))


def _publish_soon(ids: list[int]) -> None:
    """Publish off the committer's thread: a slow broker must not hold up a batch's replies."""
    threading.Thread(target=_publish, args=(ids,), name="held-publish", daemon=True).start()


def _publish(ids: list[int]) -> None:
    from ingest.delivery import publish  # ingest.delivery imports the models, this module among them

    try:
        publish(deliver_held.name, (ids,))
    except Exception:
        log.warning("broker unavailable; %d postmaster messages left for the periodic task", len(ids), exc_info=True)


# --- connector validation mail -------------------------------------------------


def release_validation_mail(domain: Domain, *, now_only: bool = True) -> int:
    """Move the validation mail held for this verified domain into its tenant's archive.

    Called when `tenants.actions.verify_domain` announces the domain
    (`on_domain_verified`); never raises (the periodic task tries
    again).  Each message becomes a Delivery of the tenant (its
    bytes stored in the tenant's bucket) that the worker archives and
    indexes like any other; the held copy is then deleted.  Returns how
    many were moved.  With `now_only`, at most RELEASE_NOW_COUNT messages
    of up to RELEASE_NOW_SIZE bytes: the rest is the periodic task's.
    """
    if domain.verified_at is None:
        return 0
    try:
        return _release(domain.tenant, domain.name, now_only)
    except Exception:
        log.warning("could not release held validation mail of %s; the periodic task will", domain.name, exc_info=True)
        return 0


def on_domain_verified(sender: object, domain: Domain, **kwargs: object) -> None:
    """Receiver of `tenants.signals.domain_verified` (connected in `ingest.apps`)."""
    release_validation_mail(domain)


def _release(tenant: Tenant, domain_name: str, now_only: bool) -> int:
    from ingest.delivery import enqueue

    waiting = HeldMessage.objects.filter(
        kind=HeldMessage.Kind.VALIDATION, released_at__isnull=True, sender_domain=domain_name.lower()
    ).order_by("received_at")
    if now_only:
        waiting = waiting.filter(size__lte=RELEASE_NOW_SIZE)[:RELEASE_NOW_COUNT]
    held = list(waiting)
    created = [delivery_id for message in held if (delivery_id := _move_into(message, tenant)) is not None]
    enqueue(created)
    delete_unreferenced(message.storage_key for message in held)
    if held:
        log.info("released %d held validation messages from %s to tenant %s", len(held), domain_name, tenant.pk)
    return len(held)


def _move_into(message: HeldMessage, tenant: Tenant) -> int | None:
    """Store the message in the tenant's bucket and record it as a Delivery; its id (None if it was already)."""
    from ingest.models import Delivery

    raw = message.read()
    [error] = get_store().put_objects([(tenant.bucket, raw_key(message.sha256), raw, message.sha256)])
    if error is not None:
        raise error
    now = timezone.now()
    with transaction.atomic():
        delivery, created = Delivery.objects.get_or_create(
            tenant=tenant,
            queue_id=message.queue_id,
            defaults={
                "sha256": message.sha256,
                "size": message.size,
                "storage_key": raw_key(message.sha256),
                "mail_from": message.mail_from,
                "rcpt_to": message.rcpt_to,
                "peer_ip": message.peer_ip,
                "helo": message.helo,
                "tls_version": message.tls_version,
                "tls_cipher": message.tls_cipher,
                "received_at": message.received_at,
                "enqueued_at": now,
            },
        )
        HeldMessage.objects.filter(pk=message.pk).update(released_at=now, tenant=tenant)
    return delivery.pk if created else None


def arrivals_for(domain_names: Iterable[str]) -> list[tuple[str, datetime]]:
    """(sender domain, latest arrival) of held validation mail from these domains.

    Only the domain and the time: the mail itself stays unseen until a
    tenant verifies the domain.  The caller passes its tenant's own
    pending domains (see web.status)."""
    rows = (
        HeldMessage.objects.filter(
            kind=HeldMessage.Kind.VALIDATION, released_at__isnull=True, sender_domain__in=list(domain_names)
        )
        .values("sender_domain")
        .annotate(last=Max("received_at"))
        .order_by("sender_domain")
    )
    return [(row["sender_domain"], row["last"]) for row in rows]


# --- the periodic task -------------------------------------------------------------


def tend(now: datetime | None = None) -> dict[str, int]:
    """Deliver postmaster mail left behind, release validation mail of verified
    domains, delete what was held longer than HOLD_DAYS.  Idempotent."""
    from regions.current import current_region
    from tenants.models import Domain

    now = now or timezone.now()
    settled = now - TEND_GRACE
    postmaster = HeldMessage.objects.filter(
        kind=HeldMessage.Kind.POSTMASTER, released_at__isnull=True, received_at__lt=settled
    )
    delivered = deliver_many(list(postmaster.values_list("pk", flat=True)[:500]))
    waiting = HeldMessage.objects.filter(kind=HeldMessage.Kind.VALIDATION, released_at__isnull=True)
    verified = Domain.objects.filter(
        verified_at__isnull=False,
        tenant__region=current_region().code,
        name__in=waiting.values_list("sender_domain", flat=True),
    ).select_related("tenant")
    released = sum(release_validation_mail(domain, now_only=False) for domain in verified)
    return {"delivered": delivered, "released": released, "purged": purge(now)}


def purge(now: datetime | None = None) -> int:
    """Delete held mail older than HOLD_DAYS (its objects first, then its rows)."""
    cutoff = (now or timezone.now()) - timedelta(days=HOLD_DAYS)
    old = HeldMessage.objects.filter(received_at__lt=cutoff)
    keys = set(old.filter(released_at__isnull=True).values_list("storage_key", flat=True))
    for key in keys:
        try:
            _delete_object(key)
        except StorageError:
            log.warning("could not delete held object %s; trying again next time", key, exc_info=True)
            return 0
    count, _ = old.delete()
    if count:
        log.info("deleted %d held messages older than %d days", count, HOLD_DAYS)
    return count


# Celery tasks: this module is imported with the ingest's models, so the worker registers them.
from celery import shared_task  # noqa: E402


@shared_task(acks_late=True)
def deliver_held(ids: list[int]) -> int:
    """Deliver these postmaster messages (published by the committer once recorded)."""
    return deliver_many(ids)


def deliver_many(ids: list[int]) -> int:
    from ingest.postmaster import deliver_many as deliver

    return deliver(ids)


@shared_task
def tend_held_mail() -> dict[str, int]:
    return tend()
