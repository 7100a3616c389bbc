"""The audit log's hash chain: what an event's hash covers, and checking a tenant's chain.

Each event's `hash` is SHA-256 of the previous event's hash (GENESIS for a
tenant's first) followed by the canonical JSON of the event's own content.
The content is what the log says happened and stays as written: the tenant,
the actor's address and API token, the action, target, detail, IP and time.
The `user` and `token` links are left out on purpose: deleting an account
clears them (SET_NULL), and that must not read as tampering; `actor_email`
and `token_label` keep the names.

This module is pure apart from `verify_chain`, so the data migration that
hashes the events written before the chain existed uses the same functions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
VERSION = 1  # of the canonical form; a new form would need a new version and a re-verification story


def normal_ip(ip: str | None) -> str | None:
    """The IP as the database gives it back (PostgreSQL's inet compresses IPv6), so its hash survives storage."""
    if not ip:
        return None
    return ipaddress.ip_address(ip).compressed


def normal_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The detail as a JSON column gives it back (tuples become lists, keys strings)."""
    value: dict[str, Any] = json.loads(json.dumps(detail or {}))
    return value


def canonical(
    *,
    tenant_id: int,
    actor_email: str,
    token_label: str,
    action: str,
    target: str,
    detail: dict[str, Any],
    ip: str | None,
    created_at: dt.datetime,
) -> bytes:
    """The bytes an event's hash covers: sorted-key, ASCII-only JSON, the time in UTC to the microsecond."""
    content = {
        "v": VERSION,
        "tenant": tenant_id,
        "actor": actor_email,
        "token": token_label,
        "action": action,
        "target": target,
        "detail": detail,
        "ip": ip,
        "at": created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def token_label(token: Any) -> str:
    """How the log names an API token for good: its name and the first characters of the token."""
    return f"{token.name} ({token.prefix}…)"[:120] if token is not None else ""


def event_hash(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + content).hexdigest()


def content_of(event: Any) -> bytes:
    """The canonical content of a stored event (an AuditEvent, or its historical model in a migration)."""
    return canonical(
        tenant_id=event.tenant_id,
        actor_email=event.actor_email,
        token_label=event.token_label,
        action=event.action,
        target=event.target,
        detail=event.detail,
        ip=normal_ip(event.ip),
        created_at=event.created_at,
    )


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: intact, or the first event that breaks it and how."""

    ok: bool
    events: int
    head_hash: str
    broken_event_id: int | None = None
    broken_event_at: dt.datetime | None = None
    reason: str = ""


def check_events(
    events: Iterable[Any],
    *,
    expected_head: str | None = None,
    expected_count: int | None = None,
    roots: dict[int, str] | None = None,
) -> Verdict:
    """Walk events in chain order (by id) and name the first whose link or hash does not hold.

    `expected_head`/`expected_count` are the chain-head row's: a chain whose
    last events were deleted is otherwise intact, and only the head row knows.
    `roots` maps event ids to the daily roots recorded at them: a chain
    rewritten from some event on (every hash recomputed) differs there.
    """
    roots = roots or {}
    running = GENESIS
    count = 0
    last: Any = None
    for event in events:
        if event.prev_hash != running:
            why = "its previous-hash link does not match the event before it (an event was removed or inserted)"
            return Verdict(False, count, running, event.pk, event.created_at, why)
        if event.hash != event_hash(running, content_of(event)):
            return Verdict(False, count, running, event.pk, event.created_at, "its content does not match its hash")
        if event.pk in roots and roots[event.pk] != event.hash:
            why = "its hash differs from the daily root recorded at it (the chain was rewritten)"
            return Verdict(False, count, running, event.pk, event.created_at, why)
        running = event.hash
        count += 1
        last = event
    if expected_head is not None and (running != (expected_head or GENESIS) or count != expected_count):
        why = f"the chain ends after {count} events at a hash the chain head does not record (events were removed)"
        return Verdict(False, count, running, last.pk if last else None, last.created_at if last else None, why)
    return Verdict(True, count, running)
