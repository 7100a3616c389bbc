"""The audit log: one entry per search, view, download and export, and per admin action.

`record_event` is its only writer; `tenants.actions` calls it in the
transaction of each change, the web layer (`web.audit.audit`) for each request.
Each entry is linked into its tenant's hash chain (`tenants.audit_chain`);
`verify_tenant` checks a chain and keeps the outcome for System Status, and
`record_daily_root` keeps the day's head hash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.db import transaction
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
    """Link the event to its tenant's chain head and store it, the head moved on, in one transaction."""
    with transaction.atomic():
        head = lock_chain(event.tenant_id)
        event.prev_hash = head.head_hash or audit_chain.GENESIS
        event.hash = audit_chain.event_hash(event.prev_hash, audit_chain.content_of(event))
        event.save(force_insert=True)
        AuditChain.objects.filter(pk=head.pk).update(head_hash=event.hash, head_event_id=event.pk)
    return event


def lock_chain(tenant_id: int) -> AuditChain:
    """The tenant's chain head, locked until the transaction ends; created on first use.

    The UPDATE comes before the read: it takes PostgreSQL's row lock and
    SQLite's write lock, so the head read next cannot change under us and
    a second writer waits here instead of linking to the same head.
    """
    if not AuditChain.objects.filter(tenant_id=tenant_id).update(events=F("events") + 1):
        AuditChain.objects.get_or_create(tenant_id=tenant_id)  # a concurrent creator's row is fine too
        AuditChain.objects.filter(tenant_id=tenant_id).update(events=F("events") + 1)
    return AuditChain.objects.get(tenant_id=tenant_id)


def chain_events(tenant: Tenant, up_to: int | None = None) -> Iterator[AuditEvent]:
    """The tenant's events in chain order, read in batches by id (a long chain does not sit in memory),
    up to event `up_to` when given."""
    last = 0
    events = AuditEvent.objects.filter(tenant=tenant)
    if up_to is not None:
        events = events.filter(pk__lte=up_to)
    while True:
        batch = list(events.filter(pk__gt=last).order_by("pk")[:VERIFY_BATCH])
        if not batch:
            return
        yield from batch
        last = batch[-1].pk


def verify_tenant(tenant: Tenant) -> audit_chain.Verdict:
    """Check the tenant's whole chain against its head, and keep the outcome for System Status.

    The head is read first and the events up to it are checked: writers go
    on meanwhile, and their events (ids beyond the head's, since they link
    one at a time) are the next verification's.
    """
    head = AuditChain.objects.filter(tenant=tenant).first()
    verdict = audit_chain.check_events(
        # No head row: every event is checked (and any is one too many).
        chain_events(tenant, (head.head_event_id or 0) if head else None),
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
