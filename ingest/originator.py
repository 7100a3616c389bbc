"""Checking a report's X-OriginatorOrg against the tenant's Microsoft 365 organization.

Tenant and region come from the journal token; this is a second opinion.
A report from another organization is still archived (refusing could lose
a customer's mail after a tenant migration), but it is flagged on System
Status so an admin can see a leaked token being used.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32

from ingest.models import Delivery

HEADER_BYTES = 64 * 1024


def originator_org(raw: bytes) -> str:
    """The top-level X-OriginatorOrg of a message, lower-cased ("" when absent)."""
    head = raw[:HEADER_BYTES]
    end = head.find(b"\r\n\r\n")
    if end == -1:
        end = head.find(b"\n\n")
    headers = BytesHeaderParser(policy=compat32).parsebytes(head[: end if end != -1 else len(head)])
    value = headers.get("X-OriginatorOrg") or ""
    return str(value).strip().lower()


def check_originator(delivery: Delivery, raw: bytes, record: bool = True) -> bool:
    """Set the report's organization on the delivery (and save it, with
    `record`; a batch saves it with the rest); True when it is flagged."""
    found = originator_org(raw)[:253]
    known = (delivery.tenant.m365_organization or "").strip().lower()
    mismatch = bool(known and found and found != known)
    if record:
        Delivery.objects.filter(pk=delivery.pk).update(originator_org=found, originator_mismatch=mismatch)
    delivery.originator_org, delivery.originator_mismatch = found, mismatch
    return mismatch
