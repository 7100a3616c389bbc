"""What the System Status page and API report about a tenant.

Tenant data comes only through `tenants.access` and `archive.access`; this module shapes it for
people (the page) and programs (the JSON API) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Q, Sum

from archive import access as archive_access
from archive.models import Message
from ingest import held
from ingest.models import Delivery
from m365.connection import expiring_certificate
from m365.models import Certificate
from regions.current import current_region
from regions.registry import Region
from tenants import access
from tenants.models import JournalToken, Tenant
from tenants.tokens import journal_local_part

MAX_FAILURES_SHOWN = 20


@dataclass(frozen=True)
class JournalAddress:
    local_part: str
    address: str
    expires_at: datetime | None  # None while the token is current


@dataclass(frozen=True)
class Failure:
    queue_id: str
    received_at: datetime
    reason: str


@dataclass(frozen=True)
class Counters:
    messages_archived: int  # archived originals, after merging the reports of one
    last_received: datetime | None
    bytes_stored: int
    pending: int  # stored, not yet verified by the worker
    failed: int  # the worker could not verify the stored object
    indexing_backlog: int = 0  # reports not yet archived + messages not yet (re)indexed
    parse_failed: int = 0  # reports kept but not parsed; see `failures`
    index_failed: int = 0  # messages whose stored objects could not be read for indexing
    failures: tuple[Failure, ...] = ()  # the most recent parse failures, with reasons
    originator_mismatches: int = 0  # reports from another Microsoft 365 organization (archived, flagged)
    foreign_organizations: tuple[str, ...] = ()  # which organizations those came from


@dataclass(frozen=True)
class HeldArrival:
    domain: str
    received_at: datetime


def held_validation_mail(tenant: Tenant) -> tuple[HeldArrival, ...]:
    """Validation mail held for a domain this tenant has added but not verified yet.

    Only the domain and the time: the mail itself stays in the region's
    holding area until the domain is verified (ingest.held), and a domain
    the tenant has not added shows nothing.
    """
    pending = access.domains(tenant).filter(verified_at__isnull=True).values_list("name", flat=True)
    return tuple(HeldArrival(domain, received_at) for domain, received_at in held.arrivals_for(pending))


@dataclass(frozen=True)
class TenantStatus:
    tenant: Tenant
    region: Region
    recipient: JournalAddress | None  # None for whoever may not see it (auditors, plain users)
    in_grace: list[JournalAddress]
    counters: Counters
    held_validation: tuple[HeldArrival, ...] = ()  # see held_validation_mail
    # The Microsoft 365 app certificate to replace within 30 days (admins only), if any.
    expiring_certificate: Certificate | None = None

    @property
    def index_failures(self) -> tuple[IndexFailure, ...]:
        """Asked for by the page only, and only when there are some."""
        return index_failures(self.tenant) if self.counters.index_failed else ()


@dataclass(frozen=True)
class IndexFailure:
    message_id: int
    subject: str
    reason: str


def index_failures(tenant: Tenant) -> tuple[IndexFailure, ...]:
    """The most recent messages that could not be made searchable, with why."""
    failed = archive_access.messages(tenant).filter(index_status=Message.IndexStatus.FAILED).order_by("-id")
    return tuple(IndexFailure(m.pk, m.subject, m.index_error) for m in failed[:MAX_FAILURES_SHOWN])


def journal_address(token: JournalToken, region: Region) -> JournalAddress:
    local_part = journal_local_part(token.token)
    return JournalAddress(local_part, f"{local_part}@{region.journal_domain}", token.expires_at)


def counters(tenant: Tenant) -> Counters:
    """The delivery counters in one query, the message counters in another."""
    totals = archive_access.deliveries(tenant).aggregate(
        last=Max("received_at"),
        size=Sum("size"),
        pending=Count("id", filter=Q(status=Delivery.Status.STORED)),
        unarchived=Count("id", filter=Q(status__in=[Delivery.Status.STORED, Delivery.Status.RECEIVED])),
        failed=Count("id", filter=Q(status=Delivery.Status.FAILED)),
        parse_failed=Count("id", filter=Q(status=Delivery.Status.PARSE_FAILED)),
        mismatches=Count("id", filter=Q(originator_mismatch=True)),
    )
    messages = archive_access.messages(tenant).aggregate(
        count=Count("id"),
        unindexed=Count("id", filter=Q(index_status=Message.IndexStatus.PENDING)),
        index_failed=Count("id", filter=Q(index_status=Message.IndexStatus.FAILED)),
    )
    failures: tuple[Failure, ...] = ()
    if totals["parse_failed"]:
        failures = tuple(
            Failure(d.queue_id, d.received_at, d.error)
            for d in archive_access.parse_failures(tenant)[:MAX_FAILURES_SHOWN]
        )
    foreign: tuple[str, ...] = ()
    if totals["mismatches"]:
        foreign = tuple(archive_access.foreign_originators(tenant)[:10])
    return Counters(
        originator_mismatches=totals["mismatches"],
        foreign_organizations=foreign,
        messages_archived=messages["count"],
        last_received=totals["last"],
        bytes_stored=totals["size"] or 0,
        pending=totals["pending"],
        failed=totals["failed"],
        indexing_backlog=totals["unarchived"] + messages["unindexed"],
        parse_failed=totals["parse_failed"],
        index_failed=messages["index_failed"],
        failures=failures,
    )


def tenant_status(tenant: Tenant, journal: bool = True) -> TenantStatus:
    """The tenant's status; `journal` False leaves out the journal addresses,
    which are credentials: whoever knows one can deliver into the archive."""
    region = current_region()
    return TenantStatus(
        tenant=tenant,
        region=region,
        recipient=journal_address(access.current_token(tenant), region) if journal else None,
        in_grace=[journal_address(token, region) for token in access.tokens_in_grace(tenant)] if journal else [],
        counters=counters(tenant),
        held_validation=held_validation_mail(tenant),
        expiring_certificate=expiring_certificate(tenant) if journal else None,
    )


def as_json(status: TenantStatus) -> dict[str, Any]:
    """The `/api/v1/status` document (keys are a contract: see DESIGN.md)."""
    c = status.counters
    document = {
        "journal_recipient": status.recipient.address if status.recipient else None,
        "messages_archived": c.messages_archived,
        "last_received": c.last_received.isoformat() if c.last_received else None,
        "bytes_stored": c.bytes_stored,
        "pending": c.pending,
        "failed": c.failed,
        "indexing_backlog": c.indexing_backlog,
        "parse_failed": c.parse_failed,
        "index_failed": c.index_failed,
        "failures": [
            {"queue_id": f.queue_id, "received_at": f.received_at.isoformat(), "reason": f.reason} for f in c.failures
        ],
        "region": status.region.code,
        "m365_organization": status.tenant.m365_organization or None,
        "originator_mismatches": c.originator_mismatches,
        "journal_recipients_in_grace": [
            {"address": a.address, "expires_at": a.expires_at.isoformat() if a.expires_at else None}
            for a in status.in_grace
        ],
    }
    if status.recipient is None:
        # Not shown at all (not null) to whoever may not see the journal address.
        del document["journal_recipient"], document["journal_recipients_in_grace"]
    return document
