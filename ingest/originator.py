"""Checking a report's X-OriginatorOrg against the tenant's Microsoft 365 organization.

Tenant and region come from the journal token; this is a second opinion.
A report from another organization is still archived (refusing could lose
a customer's mail after a tenant migration), but it is flagged on System
Status so an admin can see a leaked token being used.
"""

from __future__ import annotations

from archive.parser import rawmime
from infra.text import storable_text
from ingest.models import Delivery


def originator_org(raw: bytes) -> str:
    """The top-level X-OriginatorOrg of a message, lower-cased ("" when absent)."""
    head, _ = rawmime.split_head_body(raw)
    value = rawmime.header(rawmime.parse_headers(head), "x-originatororg") or b""
    # A NUL in the header must not reach the Delivery row (PostgreSQL refuses it).
    return storable_text(value.decode("ascii", "replace")).strip().lower()


def check_originator(delivery: Delivery, raw: bytes) -> bool:
    """Set the report's organization, and whether it is flagged, on the delivery
    (saved by whatever records the delivery's outcome); True when flagged."""
    found = originator_org(raw)[:253]
    known = (delivery.tenant.m365_organization or "").strip().lower()
    delivery.originator_org = found
    delivery.originator_mismatch = bool(known and found and found != known)
    return delivery.originator_mismatch
