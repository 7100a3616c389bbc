"""The one way into the imapjournal app's rows (and the deliveries it recorded).

Like `tenants.access`: functions take the tenant, so one tenant's journal
mailbox is never reached through another's.  `imapjournal.config` (the
settings and the test) and `imapjournal.poller` (the poller's state) are
the named writers.
"""

from __future__ import annotations

from collections.abc import Iterable

from ingest.models import Delivery
from tenants.models import Tenant

from .models import ImapJournal


def journal(tenant: Tenant) -> ImapJournal:
    """The tenant's IMAP journal settings, created empty (off) on first use."""
    found, _ = ImapJournal.objects.get_or_create(tenant=tenant)
    return found


def journal_by_id(journal_id: int) -> ImapJournal:
    """A journal by id with its tenant, for the poller, which carries ids only (DoesNotExist when gone)."""
    return ImapJournal.objects.select_related("tenant").get(pk=journal_id)


def enabled_journal_ids() -> list[int]:
    """Ids of the journals (of every tenant: the poller's) that are switched on."""
    return list(ImapJournal.objects.filter(enabled=True).order_by("id").values_list("id", flat=True))


def recorded_queue_ids(tenant: Tenant, queue_ids: Iterable[str]) -> set[str]:
    """Which of these queue ids the tenant has a Delivery for (stored and recorded)."""
    wanted = set(queue_ids)
    if not wanted:
        return set()
    return set(Delivery.objects.filter(tenant=tenant, queue_id__in=wanted).values_list("queue_id", flat=True))


def enabled_journal(tenant: Tenant) -> ImapJournal | None:
    """The tenant's journal when it is switched on (for System Status), else None; creates nothing."""
    return ImapJournal.objects.filter(tenant=tenant, enabled=True).first()
