"""State changes of tenants, as named functions (the only writers)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from infra.storage import bucket_name_for, get_store
from regions.current import current_region
from tenants.models import JournalToken, Membership, Role, Tenant, User
from tenants.tokens import new_token

DEFAULT_ROTATION_GRACE = timedelta(days=7)


def _issue_token(tenant: Tenant) -> JournalToken:
    # 339 bits of randomness: a collision is a bug, but retrying is cheap.
    for _ in range(3):
        try:
            with transaction.atomic():
                return JournalToken.objects.create(tenant=tenant, token=new_token())
        except IntegrityError:
            continue
    raise RuntimeError("could not issue a unique journal token")


def create_tenant(name: str, owner: User) -> Tenant:
    """Create a tenant in this deployment's region with its owner, token and bucket.

    Database rows are written in one transaction; the bucket is created
    inside it, so a store that refuses leaves no half-made tenant behind.
    """
    public_id = uuid.uuid4()
    with transaction.atomic():
        tenant = Tenant.objects.create(
            public_id=public_id, name=name.strip(), region=current_region().code, bucket=bucket_name_for(public_id)
        )
        Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
        _issue_token(tenant)
        get_store().create_bucket(tenant.bucket)
    return tenant


def rotate_journal_token(tenant: Tenant, grace: timedelta = DEFAULT_ROTATION_GRACE) -> JournalToken:
    """Issue a new token; current ones keep working until now + grace."""
    now = timezone.now()
    with transaction.atomic():
        JournalToken.objects.filter(tenant=tenant, expires_at__isnull=True).update(
            expires_at=now + grace, updated_at=now
        )
        return _issue_token(tenant)
