"""What the System Status page and API report about a tenant.

Tenant data comes only through `tenants.access`; this module shapes it for
people (the page) and programs (the JSON API) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Q, Sum

from ingest.models import Delivery
from regions.current import current_region
from regions.registry import Region
from tenants import access
from tenants.models import JournalToken, Tenant
from tenants.tokens import journal_local_part


@dataclass(frozen=True)
class JournalAddress:
    local_part: str
    address: str
    expires_at: datetime | None  # None while the token is current


@dataclass(frozen=True)
class Counters:
    messages_archived: int
    last_received: datetime | None
    bytes_stored: int
    pending: int  # stored, not yet verified by the worker
    failed: int  # the worker could not verify the stored object


@dataclass(frozen=True)
class TenantStatus:
    tenant: Tenant
    region: Region
    recipient: JournalAddress
    in_grace: list[JournalAddress]
    counters: Counters


def journal_address(token: JournalToken, region: Region) -> JournalAddress:
    local_part = journal_local_part(token.token)
    return JournalAddress(local_part, f"{local_part}@{region.journal_domain}", token.expires_at)


def counters(tenant: Tenant) -> Counters:
    """All counters in one query over the tenant's deliveries."""
    totals = access.deliveries(tenant).aggregate(
        count=Count("id"),
        last=Max("received_at"),
        size=Sum("size"),
        pending=Count("id", filter=Q(status=Delivery.Status.STORED)),
        failed=Count("id", filter=Q(status=Delivery.Status.FAILED)),
    )
    return Counters(
        messages_archived=totals["count"],
        last_received=totals["last"],
        bytes_stored=totals["size"] or 0,
        pending=totals["pending"],
        failed=totals["failed"],
    )


def tenant_status(tenant: Tenant) -> TenantStatus:
    region = current_region()
    return TenantStatus(
        tenant=tenant,
        region=region,
        recipient=journal_address(access.current_token(tenant), region),
        in_grace=[journal_address(token, region) for token in access.tokens_in_grace(tenant)],
        counters=counters(tenant),
    )


def as_json(status: TenantStatus) -> dict:
    """The `/api/v1/status` document (keys are a contract: see DESIGN.md)."""
    c = status.counters
    return {
        "journal_recipient": status.recipient.address,
        "messages_archived": c.messages_archived,
        "last_received": c.last_received.isoformat() if c.last_received else None,
        "bytes_stored": c.bytes_stored,
        "pending": c.pending,
        "failed": c.failed,
        "region": status.region.code,
        "journal_recipients_in_grace": [
            {"address": a.address, "expires_at": a.expires_at.isoformat()} for a in status.in_grace
        ],
    }
