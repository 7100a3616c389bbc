"""Applying retention: deleting expired messages that no hold covers, everywhere.

Which messages a rule takes is asked of the search backend with the rule's
own query, exactly as a search evaluates it: rule n takes what its query
matches and no earlier rule's does, dated before now minus its period; the
default takes what no rule matches.  Only messages indexed at their current
version are decided on (the index is what the queries see); the others wait
for the next run.

Each batch is one transaction: the tenant's policy row is locked (a hold
being created waits, then counts), the messages are locked and checked
again (date, index state, every active hold), and those to go are deleted
with their reports and mailbox copies (`archive.actions.purge_messages`).
In the same transaction each removal still due outside the database (the
index entry; every object no row refers to any more) is written down as a
PendingPurge row, carried out after commit and retried on the next run
until done: a crash never leaves a message half deleted and forgotten.

Packs are kept until their last report goes.  A pack holds the reports one
commit batch received within the same second, so they nearly always expire
together; rewriting a pack to drop some reports would change its name (the
hash of its headers) and every other report's offset, copying evidence
that Object Lock keeps until its longest retention passes anyway.  A report
whose message was deleted is unreachable meanwhile: its Delivery row, its
message's row, original, text and index entry are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from archive import actions
from archive.models import Message
from compliance import holds as legal_holds
from compliance import worm
from compliance.retention import Policy, lock_policy, policy_in_force, sync_bucket_retention
from infra.storage import ObjectLocked, StorageError, get_store
from search import Scope, get_backend
from search.query import And, DateRange, Node, Not, parse
from tenants.audit import record_event, record_system_event
from tenants.models import AuditEvent, Membership, Tenant

log = logging.getLogger(__name__)

BATCH = 500


class PendingPurge(models.Model):
    """A removal a committed deletion still owes outside the database: an index entry or a bucket object."""

    class Kind(models.TextChoices):
        INDEX = "index", "index entry"
        OBJECT = "object", "bucket object"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    ref = models.CharField(max_length=255)  # the message id, or the object's key
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "kind"], name="pending_purge_tenant")]

    def __str__(self) -> str:
        return f"{self.kind} {self.ref} of tenant {self.tenant_id}"


@dataclass
class Outcome:
    """What a run did (or, dry, would do) in one tenant."""

    tenant: Tenant
    dry_run: bool
    expired: int = 0  # past their period
    deleted: int = 0  # removed (dry: would be)
    held: int = 0  # expired, kept for a legal hold
    waiting: int = 0  # expired by date but not indexed at their current version yet
    by_rule: dict[str, int] = field(default_factory=dict)
    objects_deleted: int = 0
    objects_locked: int = 0  # still under Object Lock retention: retried by the next run
    index_deleted: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "expired": self.expired,
            "deleted": self.deleted,
            "held": self.held,
            "waiting": self.waiting,
            "by_rule": self.by_rule,
            "objects_deleted": self.objects_deleted,
            "objects_locked": self.objects_locked,
            "index_deleted": self.index_deleted,
        }


@dataclass(frozen=True)
class Selection:
    label: str  # "rule 1", "default"
    query: Node
    cutoff: datetime


def selections(policy: Policy, now: datetime) -> list[Selection]:
    """Per rule, then the default: the query of what it takes and has expired."""
    parsed = [parse(rule.query) for rule in policy.rules]
    found = []
    periods = [(f"rule {n}", rule.period) for n, rule in enumerate(policy.rules, 1)] + [("default", policy.default)]
    for n, (label, period) in enumerate(periods):
        cutoff = period.cutoff(now)
        if cutoff is None:
            continue
        own = parsed[n : n + 1]  # the default has no query of its own
        earlier = tuple(Not(node) for node in parsed[:n])
        found.append(Selection(label, And((*own, *earlier, DateRange(end=cutoff))), cutoff))
    return found


def preview(tenant: Tenant, policy: Policy, now: datetime | None = None) -> Outcome:
    """How many messages `policy` would delete now, per rule, and how many holds keep: a dry run."""
    return run(tenant, dry_run=True, policy=policy, now=now, audit=False)


def run(
    tenant: Tenant,
    *,
    dry_run: bool = False,
    policy: Policy | None = None,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    actor: Membership | None = None,
    audit: bool = True,
) -> Outcome:
    """Delete (or with `dry_run` count) the tenant's expired, unheld messages under the policy in force."""
    now = now or timezone.now()
    policy = policy or policy_in_force(tenant, now)
    outcome = Outcome(tenant, dry_run)
    if not dry_run:
        sync_bucket_retention(tenant, policy)
        worm.sync_legal_holds(tenant)  # a hold placed since the last run reaches the bucket first
        finish_pending(tenant, outcome)  # what an earlier run left undone
    chosen = selections(policy, now)
    backend, scope = get_backend(), Scope(tenant.pk, None)
    total = sum(backend.search(scope, s.query, 0, 1).count for s in chosen)
    done = 0
    for selection in chosen:
        outcome.by_rule.setdefault(selection.label, 0)
        for batch in _batches(backend.scan(scope, selection.query), BATCH):
            _decide(tenant, selection, batch, outcome, dry_run)
            done += len(batch)
            if progress:
                progress(done, total)
    if not dry_run:
        finish_pending(tenant, outcome)
    if audit:
        detail = outcome.as_json()
        if actor is not None:
            record_event(actor, AuditEvent.Action.RETENTION_APPLIED, detail, target="retention")
        else:
            record_system_event(tenant.pk, AuditEvent.Action.RETENTION_APPLIED, detail, target="retention")
    return outcome


def _batches(ids: Iterator[int], size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for message_id in ids:
        batch.append(message_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _decide(tenant: Tenant, selection: Selection, ids: list[int], outcome: Outcome, dry_run: bool) -> None:
    """One batch, in one transaction: lock, check again, keep the held, delete the rest."""
    with transaction.atomic():
        lock_policy(tenant)
        rows = list(
            Message.objects.select_for_update()
            .filter(tenant=tenant, pk__in=ids, date__lt=selection.cutoff)
            .order_by("pk")
        )
        current = [m for m in rows if m.index_status == Message.IndexStatus.INDEXED]
        outcome.waiting += len(rows) - len(current)
        outcome.expired += len(current)
        held = legal_holds.covered(tenant, current)
        doomed = [m for m in current if m.pk not in held]
        outcome.held += len(current) - len(doomed)
        outcome.by_rule[selection.label] = outcome.by_rule.get(selection.label, 0) + len(doomed)
        outcome.deleted += len(doomed)
        if dry_run or not doomed:
            return
        keys = actions.purge_messages(doomed)
        PendingPurge.objects.bulk_create(
            [PendingPurge(tenant=tenant, kind=PendingPurge.Kind.INDEX, ref=str(m.pk)) for m in doomed]
            + [PendingPurge(tenant=tenant, kind=PendingPurge.Kind.OBJECT, ref=key) for key in sorted(keys)]
        )


def finish_pending(tenant: Tenant, outcome: Outcome | None = None) -> None:
    """Carry out the removals committed deletions still owe: index entries, then objects."""
    outcome = outcome or Outcome(tenant, False)
    pending = PendingPurge.objects.filter(tenant=tenant)
    entries = list(pending.filter(kind=PendingPurge.Kind.INDEX).order_by("pk"))
    for start in range(0, len(entries), BATCH):
        chunk = entries[start : start + BATCH]
        try:
            get_backend().delete(tenant.pk, [int(entry.ref) for entry in chunk])
        except Exception as exc:  # noqa: BLE001 - the search backend is down: the next run tries again
            _failed(chunk, exc)
            continue
        PendingPurge.objects.filter(pk__in=[entry.pk for entry in chunk]).delete()
        outcome.index_deleted += len(chunk)
    if entries:
        get_backend().refresh()
    for entry in pending.filter(kind=PendingPurge.Kind.OBJECT).order_by("pk").iterator():
        _purge_object(tenant, entry, outcome)


def _purge_object(tenant: Tenant, entry: PendingPurge, outcome: Outcome) -> None:
    # Content-addressed: the same bytes may have been archived again since.
    if actions.referenced_keys(tenant.pk, {entry.ref}):
        entry.delete()
        return
    try:
        get_store().purge(tenant.bucket, entry.ref)
    except ObjectLocked as exc:
        outcome.objects_locked += 1
        _failed([entry], exc)
        return
    except StorageError as exc:
        _failed([entry], exc)
        return
    entry.delete()
    outcome.objects_deleted += 1


def _failed(entries: list[PendingPurge], exc: Exception) -> None:
    log.warning("retention could not remove %d items yet: %s", len(entries), exc)
    PendingPurge.objects.filter(pk__in=[e.pk for e in entries]).update(
        attempts=models.F("attempts") + 1, error=str(exc)[:2000]
    )


def pending_count(tenant: Tenant) -> int:
    return PendingPurge.objects.filter(tenant=tenant).count()
