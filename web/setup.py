"""Live checks of the Exchange Online setup, shown on System Status.

Each answers from what actually arrived: a journal report, the send
connector's validation mail (the ingest records it as a Delivery whose
recipients include `archive@archive.<site>`), a verified domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Max, Min

from archive import access as archive_access
from ingest.models import Delivery
from regions.registry import Region
from tenants import access
from tenants.models import AuditEvent, Tenant


@dataclass(frozen=True)
class SetupChecks:
    verified_domains: list[str]
    pending_domains: int
    validation_received: datetime | None  # the latest connector validation mail
    last_journal_report: datetime | None  # the latest delivery to a journal address
    first_search: datetime | None = None  # when someone of the tenant first searched the archive

    @property
    def done(self) -> int:
        return sum(
            map(bool, (self.verified_domains, self.validation_received, self.last_journal_report, self.first_search))
        )


def setup_checks(tenant: Tenant, region: Region) -> SetupChecks:
    # Journaling's checks: items imported from mailboxes (archive.items) prove nothing about the connector.
    deliveries = archive_access.deliveries(tenant).filter(source=Delivery.Source.JOURNAL)
    # rcpt_to is a JSON list; icontains works on it in PostgreSQL and SQLite alike.
    validation = deliveries.filter(rcpt_to__icontains=region.validation_address)
    journal = deliveries.exclude(rcpt_to__icontains=region.validation_address)
    domains = list(access.domains(tenant))
    return SetupChecks(
        verified_domains=[d.name for d in domains if d.is_verified],
        pending_domains=sum(1 for d in domains if not d.is_verified),
        validation_received=validation.aggregate(last=Max("received_at"))["last"],
        last_journal_report=journal.aggregate(last=Max("received_at"))["last"],
        first_search=access.audit_events(tenant)
        .filter(action=AuditEvent.Action.SEARCH)
        .aggregate(first=Min("created_at"))["first"],
    )
