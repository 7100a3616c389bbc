"""WORM: S3 Object Lock legal holds on the objects of held messages.

The database decides what retention may delete; Object Lock makes the
bucket refuse it too, whoever asks.  Each object of a message an active
hold covers (its original, decrypted copy, text, and the report or pack
holding each of its reports) gets an S3 legal hold; when no active hold
covers any message using it any more, the legal hold is lifted.  The
objects under legal hold are recorded (HeldObject) so that a sync only
sends the changes.  Without Object Lock (the folder store, or
ARCHIVA_S3_OBJECT_LOCK off) there is nothing to do: the holds are enforced
by `compliance.purge` alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import models

from archive.models import Message
from compliance.holds import Hold, active_holds, custodian_addresses
from infra.storage import StorageError, get_store
from ingest.models import Delivery
from search import Scope, get_backend
from tenants.models import Tenant

log = logging.getLogger(__name__)


class HeldObject(models.Model):
    """An object of the tenant's bucket that carries an S3 legal hold set by us."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.CharField(max_length=255)
    held_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="held_object_once")]

    def __str__(self) -> str:
        return f"{self.key} of tenant {self.tenant_id} (legal hold)"


@dataclass
class HoldSync:
    placed: int = 0
    lifted: int = 0
    failed: int = 0


def covered_ids(tenant: Tenant, hold: Hold) -> set[int]:
    """Every message the hold covers now (the query through the search backend, custodians by participants)."""
    ids: set[int] | None = None
    if hold.query:
        ids = set(get_backend().scan(Scope(tenant.pk, None), hold.query))
    if hold.custodians:
        custodians = custodian_addresses(tenant, hold.custodians)
        rows = Message.objects.filter(tenant=tenant).only("pk", "participants")
        if ids is not None:
            rows = rows.filter(pk__in=ids) if len(ids) < 10_000 else rows
        mine = {m.pk for m in rows.iterator(chunk_size=2000) if not custodians.isdisjoint(m.participants)}
        ids = mine if ids is None else ids & mine
    return ids or set()


def keys_of(tenant: Tenant, message_ids: set[int]) -> set[str]:
    """The objects these messages use: originals, decrypted copies, texts, reports and packs."""
    keys: set[str] = set()
    wanted = sorted(message_ids)
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        for row in Message.objects.filter(tenant=tenant, pk__in=chunk).values_list(
            "original_key", "decrypted_key", "text_key"
        ):
            keys.update(key for key in row if key)
        keys.update(Delivery.objects.filter(tenant=tenant, message_id__in=chunk).values_list("storage_key", flat=True))
    return keys


def sync_legal_holds(tenant: Tenant) -> HoldSync:
    """Make the bucket's legal holds match the tenant's active holds."""
    result = HoldSync()
    store = get_store()
    if not store.object_lock:
        return result
    covered: set[int] = set()
    for hold in active_holds(tenant):
        covered |= covered_ids(tenant, hold)
    wanted = keys_of(tenant, covered)
    have = set(HeldObject.objects.filter(tenant=tenant).values_list("key", flat=True))
    for key in sorted(wanted - have):
        try:
            store.set_legal_hold(tenant.bucket, key, True)
        except StorageError as exc:
            log.warning("legal hold not set on %s: %s", key, exc)
            result.failed += 1
            continue
        HeldObject.objects.get_or_create(tenant=tenant, key=key)
        result.placed += 1
    for key in sorted(have - wanted):
        try:
            store.set_legal_hold(tenant.bucket, key, False)
        except StorageError as exc:
            log.warning("legal hold not lifted from %s: %s", key, exc)
            result.failed += 1
            continue
        HeldObject.objects.filter(tenant=tenant, key=key).delete()
        result.lifted += 1
    return result
