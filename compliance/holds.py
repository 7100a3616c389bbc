"""Legal holds: named, with a reason and an owner, by query and/or custodians.

A hold covers a message when its query matches it (evaluated by the search
backend, exactly as a search would) and, when it names custodians, one of
them took part in it (sender, recipient, or a copy in their mailbox: the
message's `participants`).  With both, both must hold: the custodians' mail
about the matter.  A covered message is never deleted, whatever its age
(`compliance.purge` checks every message against the holds in the
transaction that deletes it).  Creating and releasing a hold are audited;
a released hold is kept, with who released it and when.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from archive.models import Message
from infra.storage import get_store
from ingest.delivery import publish
from search import Scope, get_backend
from search.query import QueryError, parse
from tenants import access
from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

log = logging.getLogger(__name__)

MAX_CUSTODIANS = 500
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class Hold(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="holds")
    name = models.CharField(max_length=200)
    reason = models.TextField()
    query = models.TextField(blank=True)  # the search language; blank: all the custodians' mail
    custodians = models.JSONField(default=list)  # lower-cased addresses; empty: whoever
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    owner_email = models.CharField(max_length=320)  # kept if the account goes
    created_by_email = models.CharField(max_length=320)
    created_at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by_email = models.CharField(max_length=320, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "released_at"], name="hold_tenant_active")]

    def __str__(self) -> str:
        return f"hold {self.name!r} of tenant {self.tenant_id}"

    @property
    def active(self) -> bool:
        return self.released_at is None


class HoldError(ValueError):
    """A hold that cannot be made or released as asked; str(error) is for the user."""


def holds(tenant: Tenant) -> QuerySet[Hold]:
    """Every hold of the tenant, active ones first, newest first."""
    return Hold.objects.filter(tenant=tenant).order_by(models.F("released_at").desc(nulls_first=True), "-created_at")


def active_holds(tenant: Tenant) -> list[Hold]:
    return list(Hold.objects.filter(tenant=tenant, released_at__isnull=True).order_by("pk"))


def hold_for(tenant: Tenant, hold_id: int | str) -> Hold:
    """The tenant's hold; Hold.DoesNotExist alike for missing and another tenant's."""
    try:
        return Hold.objects.get(tenant=tenant, pk=int(hold_id))
    except (ValueError, TypeError):
        raise Hold.DoesNotExist from None


def read_custodians(value: object) -> list[str]:
    """Addresses from a list or a text of addresses separated by commas, spaces or lines."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,;]+", value) if part]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise HoldError("Custodians are a list of mailbox addresses.")
    found = list(dict.fromkeys(a.strip().strip("<>").lower() for a in value if a.strip()))
    wrong = [a for a in found if not _ADDRESS.match(a)]
    if wrong:
        raise HoldError(f"“{wrong[0][:80]}” is not a mailbox address.")
    if len(found) > MAX_CUSTODIANS:
        raise HoldError(f"At most {MAX_CUSTODIANS} custodians per hold.")
    return found


def create_hold(
    membership: Membership,
    *,
    name: str,
    reason: str,
    query: str = "",
    custodians: object = (),
    owner: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> Hold:
    """An owner's or admin's new hold; `owner` (a member of the tenant) answers for it, the creator by default."""
    if not membership.is_admin:
        raise HoldError("Only owners and admins place legal holds.")
    name, reason, query = (name or "").strip(), (reason or "").strip(), (query or "").strip()
    if not name or len(name) > 200:
        raise HoldError("A hold needs a name (up to 200 characters).")
    if not reason:
        raise HoldError("A hold needs a reason.")
    addresses = read_custodians(list(custodians) if isinstance(custodians, tuple) else custodians)
    if not query and not addresses:
        raise HoldError("A hold needs a query, custodians, or both.")
    try:
        parse(query)
    except QueryError as exc:
        raise HoldError(f"Query: {exc}") from None
    owner = owner or membership
    if owner.tenant_id != membership.tenant_id:
        raise HoldError("The owner must be a member of this organization.")
    from compliance.retention import lock_policy

    with transaction.atomic():
        lock_policy(membership.tenant)  # a purge under way finishes its batch first, then sees the hold
        hold = Hold.objects.create(
            tenant=membership.tenant,
            name=name,
            reason=reason,
            query=query,
            custodians=addresses,
            owner=owner.user,
            owner_email=owner.user.email,
            created_by_email=membership.user.email,
        )
        record_event(membership, AuditEvent.Action.HOLD_CREATED, hold_json(hold), ip=ip, token=token, target=name)
        transaction.on_commit(lambda: _sync_objects_later(hold.tenant_id))
    return hold


def release_hold(membership: Membership, hold: Hold, *, ip: str | None = None, token: ApiToken | None = None) -> Hold:
    if not membership.is_admin:
        raise HoldError("Only owners and admins release legal holds.")
    with transaction.atomic():
        hold = Hold.objects.select_for_update().get(pk=hold.pk, tenant=membership.tenant)
        if hold.released_at is not None:
            raise HoldError("This hold was released already.")
        hold.released_at = timezone.now()
        hold.released_by_email = membership.user.email
        hold.save(update_fields=["released_at", "released_by_email"])
        record_event(membership, AuditEvent.Action.HOLD_RELEASED, hold_json(hold), ip=ip, token=token, target=hold.name)
        transaction.on_commit(lambda: _sync_objects_later(hold.tenant_id))
    return hold


def _sync_objects_later(tenant_id: int) -> None:
    """With Object Lock, the bucket's legal holds follow in the background (a
    hold may cover a million objects); the daily run catches up if this fails."""
    if not get_store().object_lock:
        return
    from compliance.tasks import sync_legal_holds

    try:
        publish(sync_legal_holds.name, (tenant_id,))
    except Exception:  # noqa: BLE001 - the broker is away: the daily retention run syncs them
        log.warning("could not ask for the legal holds of tenant %s to be synced", tenant_id, exc_info=True)


def covered(tenant: Tenant, messages: Iterable[Message], among: list[Hold] | None = None) -> dict[int, list[Hold]]:
    """The active holds (or `among`) covering each of these messages, by message id; uncovered ones are absent."""
    messages = list(messages)
    found: dict[int, list[Hold]] = {}
    for hold in active_holds(tenant) if among is None else among:
        for message_id in _covered_by(tenant, hold, messages):
            found.setdefault(message_id, []).append(hold)
    return found


def custodian_addresses(tenant: Tenant, custodians: list[str]) -> set[str]:
    """The custodians' addresses, and for a custodian who is a member all of
    theirs (verified addresses and aliases, as their own search counts them):
    a hold on a person keeps their mail under every address."""
    wanted = set(custodians)
    found = set(wanted)
    for membership in access.members(tenant):
        own = {membership.user.email.lower(), *(a.address.lower() for a in membership.aliases.all())}
        if not own.isdisjoint(wanted):
            found.update(access.addresses_for(membership), own)
    return found


def _covered_by(tenant: Tenant, hold: Hold, messages: list[Message]) -> set[int]:
    candidates = messages
    if hold.custodians:
        custodians = custodian_addresses(tenant, hold.custodians)
        candidates = [m for m in messages if not custodians.isdisjoint(m.participants)]
    if not hold.query or not candidates:
        return {m.pk for m in candidates}
    return get_backend().matching(Scope(tenant.pk, None), hold.query, [m.pk for m in candidates])


def holds_covering(tenant: Tenant, message: Message) -> list[Hold]:
    """The active holds covering one message, for its page."""
    return covered(tenant, [message]).get(message.pk, [])


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.pk,
        "name": hold.name,
        "reason": hold.reason,
        "query": hold.query,
        "custodians": hold.custodians,
        "owner": hold.owner_email,
        "created_by": hold.created_by_email,
        "created_at": hold.created_at.isoformat(),
        "released_at": hold.released_at.isoformat() if hold.released_at else None,
        "released_by": hold.released_by_email or None,
    }
