"""The audit log: one entry per search, view, download and export, and per admin action.

`record_event` is its only writer; `tenants.actions` calls it in the
transaction of each change, the web layer (`web.audit.audit`) for each request.
Each entry is linked into its tenant's hash chain (`tenants.audit_chain`)
right after it is committed, by `link_pending`; `verify_tenant` checks a
chain and keeps the outcome for System Status, and `record_daily_root` keeps
the day's head hash.

Why linking is not part of the write: a chain is one sequence per tenant, so
whoever links holds the tenant's chain head until they commit.  Linking
inside each search's own transaction made every reader of a tenant queue on
that row, one commit (an fsync) after another: on PostgreSQL, 4 processes
searching at once recorded 16 events/s against 39 for plain INSERTs, with a
median wait of 120 ms per search (bench/audit.py, loaded machine).  Now a
reader only INSERTs its event; after the commit it links every pending event
of the tenant in one transaction if nobody else is linking (PostgreSQL:
`SKIP LOCKED`), and otherwise leaves them to the one who is, who looks again
before it stops.  The beat's `link_audit_events` links what a crash left
pending.  An event waits unlinked for the length of one linking transaction;
`verify_tenant` links what is pending before it checks.  Measured back to
back with the earlier revision (bench/README.md): 8 readers of one tenant
record 379 events/s (245 before), median 15.5 ms and p99 34 ms (21 and 143).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from tenants import audit_chain
from tenants.models import ApiToken, AuditChain, AuditEvent, AuditRoot, Membership, Tenant

VERIFY_BATCH = 2000
SYSTEM_ACTOR = "Archiva (automatic)"  # the actor of changes made by a task or command, not a person


def record_event(
    membership: Membership,
    action: str,
    detail: dict[str, Any] | None = None,
    *,
    ip: str | None = None,
    token: ApiToken | None = None,
    target: str = "",
) -> AuditEvent:
    """Write one audit log entry: every search, view, download and export, and
    every admin action, by `membership`'s user (through `token` for an API
    call) from `ip`, done to `target`; linked to the tenant's previous entry."""
    event = AuditEvent(
        tenant_id=membership.tenant_id,
        user_id=membership.user_id,
        actor_email=membership.user.email if membership.user_id else "",
        token=token,
        token_label=audit_chain.token_label(token),
        action=action,
        target=target[:400],
        detail=audit_chain.normal_detail(detail),
        ip=audit_chain.normal_ip(ip),
        created_at=timezone.now(),
    )
    return _link_and_save(event)


def record_system_event(
    tenant_id: int, action: str, detail: dict[str, Any] | None = None, *, target: str = ""
) -> AuditEvent:
    """An admin action nobody asked for at that moment (the daily Microsoft 365 sync
    changing aliases or domains, a command): in the log and the chain all the same,
    its actor named SYSTEM_ACTOR."""
    event = AuditEvent(
        tenant_id=tenant_id,
        actor_email=SYSTEM_ACTOR,
        action=action,
        target=target[:400],
        detail=audit_chain.normal_detail(detail),
        created_at=timezone.now(),
    )
    return _link_and_save(event)


def _link_and_save(event: AuditEvent) -> AuditEvent:
    """Store the event, and have it linked once it is committed (at once outside a transaction)."""
    event.save(force_insert=True)
    tenant_id = event.tenant_id
    transaction.on_commit(lambda: link_pending(tenant_id), robust=True)
    return event


# Events linked in one transaction, and the rounds one caller links before leaving the rest to the beat.
LINK_BATCH = 1000
LINK_ROUNDS = 50


def link_pending(tenant_id: int, *, wait: bool = False) -> int:
    """Link the tenant's pending events into its chain, oldest id first, a
    batch per transaction, until none is pending; how many were linked.

    Without `wait` (after each event's commit) this gives way at once when
    another linker holds the chain head (PostgreSQL; SQLite's one writer
    waits its turn): that linker looks for pending events again after each
    batch, and every event was committed before its writer tried the head,
    so whoever holds the head next sees it.  With `wait` (verification, the
    beat) it waits for the head.
    """
    linked = 0
    unlinked = AuditEvent.objects.filter(tenant_id=tenant_id, seq__isnull=True)
    for round_ in range(LINK_ROUNDS):
        # Looking again after a batch is one indexed query, not a claim of the
        # head: nearly always nobody gave way meanwhile and nothing is pending.
        if round_ and not unlinked.exists():
            return linked
        with transaction.atomic():
            head = _claim_chain(tenant_id, wait=wait)
            if head is None:
                return linked
            pending = list(unlinked.order_by("pk")[:LINK_BATCH])
            if not pending:
                return linked
            running, place = head.head_hash or audit_chain.GENESIS, head.events
            for event in pending:
                place += 1
                event.seq, event.prev_hash = place, running
                event.hash = running = audit_chain.event_hash(running, audit_chain.content_of(event))
            AuditEvent.objects.bulk_update(pending, ["seq", "prev_hash", "hash"], batch_size=LINK_BATCH)
            AuditChain.objects.filter(pk=head.pk).update(head_hash=running, head_event_id=pending[-1].pk, events=place)
            linked += len(pending)
    return linked


def _claim_chain(tenant_id: int, *, wait: bool) -> AuditChain | None:
    """The tenant's chain head, locked until the transaction ends (created on
    first use); None when another linker holds it and `wait` is false.

    PostgreSQL: `SELECT … FOR UPDATE [SKIP LOCKED]`.  SQLite has no row
    locks: an UPDATE takes its database write lock first, so the head read
    next cannot change under us (and a second linker waits for it).
    """
    if connection.features.has_select_for_update_skip_locked:
        heads = AuditChain.objects.select_for_update(skip_locked=not wait).filter(tenant_id=tenant_id)
        head = heads.first()
        if head is None and not AuditChain.objects.filter(tenant_id=tenant_id).exists():  # the chain's first link
            AuditChain.objects.get_or_create(tenant_id=tenant_id)  # a concurrent creator's row is fine too
            head = heads.first()
        return head
    if not AuditChain.objects.filter(tenant_id=tenant_id).update(events=F("events")):
        AuditChain.objects.get_or_create(tenant_id=tenant_id)
    return AuditChain.objects.get(tenant_id=tenant_id)


def link_all_pending() -> int:
    """The beat's sweep: link what a crash between an event's commit and its linking left pending."""
    tenant_ids = AuditEvent.objects.filter(seq__isnull=True).values_list("tenant_id", flat=True).distinct()
    return sum(link_pending(tenant_id, wait=True) for tenant_id in list(tenant_ids))


def chain_events(tenant: Tenant, up_to: int | None = None) -> Iterator[AuditEvent]:
    """The tenant's linked events in chain order, read in batches (a long chain does not sit in
    memory), up to place `up_to` when given."""
    last = 0
    events = AuditEvent.objects.filter(tenant=tenant, seq__isnull=False)
    if up_to is not None:
        events = events.filter(seq__lte=up_to)
    while True:
        batch = list(events.filter(seq__gt=last).order_by("seq")[:VERIFY_BATCH])
        if not batch:
            return
        yield from batch
        last = batch[-1].seq or 0


def verify_tenant(tenant: Tenant) -> audit_chain.Verdict:
    """Link what is pending, then check the tenant's whole chain against its
    head, and keep the outcome for System Status.

    The head is read first and the events up to its place are checked:
    writers go on meanwhile, and their events (linked at later places) are
    the next verification's.
    """
    link_pending(tenant.pk, wait=True)
    head = AuditChain.objects.filter(tenant=tenant).first()
    verdict = audit_chain.check_events(
        # No head row: every linked event is checked (and any is one too many).
        chain_events(tenant, head.events if head else None),
        expected_head=head.head_hash if head else "",
        expected_count=head.events if head else 0,
        roots={
            event_id: root_hash
            for event_id, root_hash in AuditRoot.objects.filter(tenant=tenant).values_list("event_id", "hash")
            if event_id is not None
        },
    )
    AuditChain.objects.update_or_create(
        tenant=tenant,
        defaults={
            "verified_at": timezone.now(),
            "verified_ok": verdict.ok,
            "verified_events": verdict.events,
            "broken_event_id": verdict.broken_event_id,
            "broken_event_at": verdict.broken_event_at,
            "broken_reason": verdict.reason,
        },
    )
    return verdict


def record_daily_root(tenant: Tenant, day: dt.date | None = None) -> AuditRoot:
    """The chain head's hash as the day's root (the day's first call wins; a re-run changes nothing)."""
    link_pending(tenant.pk, wait=True)
    head = AuditChain.objects.filter(tenant=tenant).first()
    root, _ = AuditRoot.objects.get_or_create(
        tenant=tenant,
        day=day or timezone.now().date(),
        defaults={
            "hash": head.head_hash if head else "",
            "event_id": head.head_event_id if head else None,
            "events": head.events if head else 0,
        },
    )
    return root


def chain_status(tenant: Tenant) -> AuditChain | None:
    """The tenant's chain head with its last verification, for System Status; None before any event."""
    return AuditChain.objects.filter(tenant=tenant).first()


def daily_check(now: dt.datetime | None = None) -> list[tuple[Tenant, audit_chain.Verdict]]:
    """The daily task's work for every tenant with a chain: record the day's root, then verify the chain."""
    day = (now or timezone.now()).date()
    results = []
    for tenant in tenants_with_chains():
        record_daily_root(tenant, day)
        results.append((tenant, verify_tenant(tenant)))
    return results


def tenants_with_chains() -> list[Tenant]:
    return list(Tenant.objects.filter(audit_chain__isnull=False).order_by("pk"))
