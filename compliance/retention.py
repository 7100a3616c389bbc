"""A tenant's retention policy: a default period and ordered rules "query → period".

The first rule whose query matches a message sets its period; a message no
rule matches keeps the default.  A change that can only lengthen retention
takes effect at once.  Any other (a shorter period, a rule removed, moved or
inserted before others) waits for a second owner or admin to approve it,
and then for ARCHIVA_RETENTION_DELAY more: a person alone cannot make mail
disappear sooner.  The newest proposal replaces those not in force yet.
Every step is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from compliance.periods import FOREVER, Period, PeriodError, parse_period
from infra.storage import LOCK_FOREVER_DAYS, StorageError, get_store
from search.query import QueryError, parse
from tenants.audit import record_event, record_system_event
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

log = logging.getLogger(__name__)

MAX_RULES = 50
MAX_QUERY = 500


class RetentionPolicy(models.Model):
    """The policy in force.  Without a row, everything is kept forever."""

    tenant = models.OneToOneField(Tenant, on_delete=models.PROTECT, related_name="retention_policy")
    default_period = models.CharField(max_length=16, default=FOREVER)
    rules = models.JSONField(default=list)  # [{"query", "period"}], first match wins
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"retention of tenant {self.tenant_id}: {self.default_period}, {len(self.rules)} rules"


class RetentionChange(models.Model):
    """A proposed policy (the whole of it), its approval and when it takes effect."""

    class State(models.TextChoices):
        PENDING = "pending", "awaiting a second approval"
        APPROVED = "approved", "approved, waiting for its date"
        APPLIED = "applied", "in force"
        CANCELLED = "cancelled", "cancelled"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="retention_changes")
    default_period = models.CharField(max_length=16)
    rules = models.JSONField(default=list)
    state = models.CharField(max_length=12, choices=State.choices)
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    proposed_by_email = models.CharField(max_length=320, blank=True)  # kept if the account goes
    proposed_at = models.DateTimeField(default=timezone.now)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    approved_by_email = models.CharField(max_length=320, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    effective_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "state"], name="retention_change_state")]

    def __str__(self) -> str:
        return f"retention change {self.pk} of tenant {self.tenant_id} ({self.state})"


class RetentionError(ValueError):
    """A policy or an approval that cannot be accepted; str(error) is for the user."""


@dataclass(frozen=True)
class Rule:
    query: str
    period: Period


@dataclass(frozen=True)
class Policy:
    """A policy read and checked: what the purge and the previews work from."""

    default: Period
    rules: tuple[Rule, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "default_period": str(self.default),
            "rules": [{"query": rule.query, "period": str(rule.period)} for rule in self.rules],
        }

    def shortest_days(self) -> int:
        """The shortest time any message is kept, in whole days (for Object Lock's default retention)."""
        shortest = min([self.default.min_days(), *(rule.period.min_days() for rule in self.rules)])
        return LOCK_FOREVER_DAYS if shortest == float("inf") else int(shortest)


KEEP_EVERYTHING = Policy(Period(None), ())


def read_policy(default_period: object, rules: object) -> Policy:
    """A policy from user input (API, form): RetentionError naming what is wrong."""
    try:
        default = parse_period(default_period)
    except PeriodError as exc:
        raise RetentionError(f"Default period: {exc}") from None
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise RetentionError('Rules are a list of {"query": …, "period": …}.')
    if len(rules) > MAX_RULES:
        raise RetentionError(f"At most {MAX_RULES} rules.")
    read = []
    for n, rule in enumerate(rules, 1):
        query = rule.get("query")
        if not isinstance(query, str) or not query.strip():
            raise RetentionError(f"Rule {n}: a query is needed (a rule for everything is the default period).")
        if len(query) > MAX_QUERY:
            raise RetentionError(f"Rule {n}: the query is longer than {MAX_QUERY} characters.")
        try:
            parse(query)
            period = parse_period(rule.get("period"))
        except (QueryError, PeriodError) as exc:
            raise RetentionError(f"Rule {n}: {exc}") from None
        read.append(Rule(query.strip(), period))
    return Policy(default, tuple(read))


def policy_of(row: RetentionPolicy | RetentionChange | None) -> Policy:
    if row is None:
        return KEEP_EVERYTHING
    return read_policy(row.default_period, row.rules)


def only_lengthens(old: Policy, new: Policy) -> bool:
    """Whether `new` keeps every message at least as long as `old` does.

    True when the default is no shorter, the old rules are still there, in
    their order, each no shorter, and every added rule comes after them and
    keeps at least as long as the old default (the messages it takes had
    the old default).  Anything else may delete sooner: it needs approval.
    """
    if not new.default.at_least(old.default) or len(new.rules) < len(old.rules):
        return False
    for before, after in zip(old.rules, new.rules, strict=False):
        if before.query != after.query or not after.period.at_least(before.period):
            return False
    return all(rule.period.at_least(old.default) for rule in new.rules[len(old.rules) :])


# --- reading -----------------------------------------------------------------------


def changes_waiting(tenant: Tenant) -> list[RetentionChange]:
    """Proposals not in force yet, oldest first."""
    waiting = RetentionChange.objects.filter(
        tenant=tenant, state__in=[RetentionChange.State.PENDING, RetentionChange.State.APPROVED]
    )
    return list(waiting.order_by("proposed_at", "pk"))


def recent_changes(tenant: Tenant, limit: int = 20) -> list[RetentionChange]:
    return list(RetentionChange.objects.filter(tenant=tenant).order_by("-proposed_at", "-pk")[:limit])


def change_for(tenant: Tenant, change_id: int | str) -> RetentionChange:
    """The tenant's change; RetentionChange.DoesNotExist alike for missing and another tenant's."""
    return RetentionChange.objects.get(tenant=tenant, pk=int(change_id))


def policy_in_force(tenant: Tenant, now: datetime | None = None) -> Policy:
    """The policy in force now, after bringing into force the approved changes whose date has come."""
    now = now or timezone.now()
    due = RetentionChange.objects.filter(
        tenant=tenant, state=RetentionChange.State.APPROVED, effective_at__lte=now
    ).order_by("effective_at", "pk")
    for change in due:
        _put_in_force(change, now, actor=None)
    return policy_of(RetentionPolicy.objects.filter(tenant=tenant).first())


# --- changing ----------------------------------------------------------------------


def propose(
    membership: Membership,
    policy: Policy,
    *,
    ip: str | None = None,
    token: ApiToken | None = None,
    now: datetime | None = None,
) -> RetentionChange:
    """An owner's or admin's new policy: in force at once if it only lengthens
    retention, otherwise waiting for another owner's or admin's approval.
    It replaces every proposal not yet in force."""
    if not membership.is_admin:
        raise RetentionError("Only owners and admins change retention.")
    now = now or timezone.now()
    tenant = membership.tenant
    with transaction.atomic():
        current = _lock_policy(tenant)
        for waiting in changes_waiting(tenant):
            waiting.state = RetentionChange.State.CANCELLED
            waiting.save(update_fields=["state"])
            _audit(membership, AuditEvent.Action.RETENTION_CANCELLED, waiting, ip, token, reason="superseded")
        immediate = only_lengthens(policy_of(current), policy)
        change = RetentionChange.objects.create(
            tenant=tenant,
            **policy.as_json(),
            state=RetentionChange.State.PENDING,
            proposed_by=membership.user,
            proposed_by_email=membership.user.email,
            proposed_at=now,
        )
        _audit(membership, AuditEvent.Action.RETENTION_PROPOSED, change, ip, token, needs_approval=not immediate)
        if immediate:
            _put_in_force(change, now, actor=membership, ip=ip, token=token)
    return change


def approve(
    membership: Membership,
    change: RetentionChange,
    *,
    ip: str | None = None,
    token: ApiToken | None = None,
    now: datetime | None = None,
) -> RetentionChange:
    """A second owner or admin approves a proposal: it takes effect
    ARCHIVA_RETENTION_DELAY seconds from now (at once when that is 0)."""
    if not membership.is_admin:
        raise RetentionError("Only owners and admins approve retention changes.")
    now = now or timezone.now()
    with transaction.atomic():
        _lock_policy(membership.tenant)
        change = RetentionChange.objects.select_for_update().get(pk=change.pk, tenant=membership.tenant)
        if change.state != RetentionChange.State.PENDING:
            raise RetentionError(f"This change is {change.get_state_display()}: there is nothing to approve.")
        if change.proposed_by_id == membership.user_id:
            raise RetentionError("A change must be approved by another owner or admin than the one who proposed it.")
        change.state = RetentionChange.State.APPROVED
        change.approved_by = membership.user
        change.approved_by_email = membership.user.email
        change.approved_at = now
        change.effective_at = now + timedelta(seconds=settings.ARCHIVA_RETENTION_DELAY)
        change.save(update_fields=["state", "approved_by", "approved_by_email", "approved_at", "effective_at"])
        _audit(membership, AuditEvent.Action.RETENTION_APPROVED, change, ip, token, effective_at=change.effective_at)
        if change.effective_at <= now:
            _put_in_force(change, now, actor=membership, ip=ip, token=token)
    return change


def cancel(
    membership: Membership, change: RetentionChange, *, ip: str | None = None, token: ApiToken | None = None
) -> RetentionChange:
    """Withdraw a proposal not in force yet (keeping mail longer needs no second person)."""
    if not membership.is_admin:
        raise RetentionError("Only owners and admins cancel retention changes.")
    with transaction.atomic():
        _lock_policy(membership.tenant)
        change = RetentionChange.objects.select_for_update().get(pk=change.pk, tenant=membership.tenant)
        if change.state not in (RetentionChange.State.PENDING, RetentionChange.State.APPROVED):
            raise RetentionError(f"This change is {change.get_state_display()}: it cannot be cancelled.")
        change.state = RetentionChange.State.CANCELLED
        change.save(update_fields=["state"])
        _audit(membership, AuditEvent.Action.RETENTION_CANCELLED, change, ip, token)
    return change


def _lock_policy(tenant: Tenant) -> RetentionPolicy:
    """The policy row (made as "keep forever" when missing), locked: changes,
    approvals, holds and purges of one tenant go one at a time."""
    RetentionPolicy.objects.get_or_create(tenant=tenant)
    return RetentionPolicy.objects.select_for_update().get(tenant=tenant)


def lock_policy(tenant: Tenant) -> RetentionPolicy:
    """`_lock_policy` for the purge and the holds, inside their transaction."""
    return _lock_policy(tenant)


def _put_in_force(
    change: RetentionChange,
    now: datetime,
    *,
    actor: Membership | None,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> None:
    with transaction.atomic():
        RetentionPolicy.objects.update_or_create(
            tenant=change.tenant,
            defaults={"default_period": change.default_period, "rules": change.rules, "changed_at": now},
        )
        change.state = RetentionChange.State.APPLIED
        change.applied_at = now
        change.save(update_fields=["state", "applied_at"])
        detail = {"change": change.pk, "default_period": change.default_period, "rules": change.rules}
        if actor is not None:
            record_event(actor, AuditEvent.Action.RETENTION_CHANGED, detail, ip=ip, token=token, target="retention")
        else:
            record_system_event(change.tenant_id, AuditEvent.Action.RETENTION_CHANGED, detail, target="retention")
        transaction.on_commit(lambda: sync_bucket_retention(change.tenant, policy_of(change)))


def sync_bucket_retention(tenant: Tenant, policy: Policy) -> None:
    """Lock new objects (S3 Object Lock) for the shortest period in force, so
    that no object outlives its lock for long and none can go sooner."""
    try:
        get_store().set_default_retention(tenant.bucket, policy.shortest_days())
    except StorageError as exc:
        log.warning("could not set the default retention of tenant %s (the next run tries again): %s", tenant.pk, exc)


def _audit(
    membership: Membership,
    action: str,
    change: RetentionChange,
    ip: str | None,
    token: ApiToken | None,
    **extra: Any,
) -> None:
    detail = {"change": change.pk, "default_period": change.default_period, "rules": change.rules}
    detail.update({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in extra.items()})
    record_event(membership, action, detail, ip=ip, token=token, target="retention")


def change_json(change: RetentionChange) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": change.pk,
        "state": change.state,
        "default_period": change.default_period,
        "rules": change.rules,
        "proposed_by": change.proposed_by_email,
        "proposed_at": when(change.proposed_at),
        "approved_by": change.approved_by_email or None,
        "approved_at": when(change.approved_at),
        "effective_at": when(change.effective_at),
    }
