"""Checking a report's X-OriginatorOrg against the tenant's Microsoft 365 organization.

Tenant and region come from the journal token; this is a second opinion.
A report from another organization is still archived (refusing could lose
a customer's mail after a tenant migration), but it is flagged on System
Status so an admin can see a leaked token being used.  Pure functions of
the report's bytes; `ingest.delivery.note_originator` sets the result on
the Delivery.
"""

from __future__ import annotations

from archive.parser import rawmime
from infra.text import storable_text


def originator_org(raw: bytes) -> str:
    """The top-level X-OriginatorOrg of a message, lower-cased ("" when absent)."""
    head, _ = rawmime.split_head_body(raw)
    value = rawmime.header(rawmime.parse_headers(head), "x-originatororg") or b""
    # A NUL in the header must not reach the Delivery row (PostgreSQL refuses it).
    return storable_text(value.decode("ascii", "replace")).strip().lower()


def is_foreign(found: str, known: str | None) -> bool:
    """Whether a report's organization `found` is not the tenant's `known` one
    (False while either is unknown: nothing to compare)."""
    known = (known or "").strip().lower()
    return bool(known and found and found != known)
