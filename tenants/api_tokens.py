"""API tokens: `arc_` + 43 url-safe characters (256 bits from `secrets`),
created and revoked (both audited) and touched on use.

Only the SHA-256 is stored.  A slow password hash would add nothing: the
token is random, not chosen by a person, so it cannot be guessed offline.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership

PREFIX = "arc_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.strip().encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(PREFIX) + 6]


def create_api_token(
    membership: Membership,
    name: str,
    ip: str | None = None,
    scope: str = ApiToken.Scope.ADMIN,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token acting as `membership`'s user; returns it with the secret, shown once.

    A token never has more than its creator: it acts with the creator's role
    as it is at each request (a demoted creator's tokens lose what the old role
    allowed), and `search:read` narrows that further to searching and downloading."""
    if scope not in ApiToken.Scope.values:
        raise ValueError(f"scope must be one of {', '.join(ApiToken.Scope.values)}")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("the expiry must be in the future")
    secret = new_secret()
    with transaction.atomic():
        token = ApiToken.objects.create(
            tenant_id=membership.tenant_id,
            created_by_id=membership.user_id,
            name=name.strip()[:100] or "API token",
            token_hash=hash_token(secret),
            prefix=display_prefix(secret),
            scope=scope,
            expires_at=expires_at,
        )
        detail = {
            "token": token.pk,
            "name": token.name,
            "scope": scope,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        record_event(membership, AuditEvent.Action.TOKEN_CREATED, detail, ip=ip, target=token.name)
    return token, secret


def revoke_api_token(membership: Membership, token: ApiToken, ip: str | None = None) -> bool:
    """Revoke a token of the member's tenant; False when it was already revoked."""
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, tenant_id=membership.tenant_id, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            record_event(
                membership,
                AuditEvent.Action.TOKEN_REVOKED,
                {"token": token.pk, "name": token.name},
                ip=ip,
                target=token.name,
            )
    return bool(revoked)


def touch_api_token(token: ApiToken, every_seconds: int = 60) -> None:
    """Note when a token was last used, at most once a minute (no write per request)."""
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= every_seconds:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
