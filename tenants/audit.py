"""The audit log: one entry per search, view, download and export, and per admin action.

`record_event` is its only writer; `tenants.actions` calls it in the
transaction of each change, the web layer (`web.audit.audit`) for each request.
"""

from __future__ import annotations

from tenants.models import ApiToken, AuditEvent, Membership, Tenant


def record_event(
    membership: Membership,
    action: str,
    detail: dict | None = None,
    *,
    ip: str | None = None,
    token: ApiToken | None = None,
    target: str = "",
) -> AuditEvent:
    """Write one audit log entry: every search, view, download and export, and
    every admin action, by `membership`'s user (through `token` for an API
    call) from `ip`, done to `target`."""
    return AuditEvent.objects.create(
        tenant_id=membership.tenant_id,
        user_id=membership.user_id,
        actor_email=membership.user.email if membership.user_id else "",
        token=token,
        action=action,
        target=target[:400],
        detail=detail or {},
        ip=ip,
    )


def record_system_event(tenant: Tenant, action: str, detail: dict | None = None, *, target: str = "") -> AuditEvent:
    """Write one audit log entry for what Archiva itself did in a tenant (a
    scheduled retention run, a change coming into force): no actor, no IP."""
    return AuditEvent.objects.create(
        tenant_id=tenant.pk, user_id=None, actor_email="", action=action, target=target[:400], detail=detail or {}
    )
