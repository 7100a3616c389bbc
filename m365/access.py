"""The one way into the Microsoft 365 connection's rows of a tenant.

Like `tenants.access`: every function takes the tenant and answers 404
alike for "missing" and "another tenant's".  The writers
(`m365.connection`, `m365.certificates`, `m365.directory`) and this module
are the only ones that use the models' managers (tests/test_access_layer.py).
"""

from __future__ import annotations

import datetime as dt

from django.db.models import QuerySet
from django.http import Http404

from tenants.models import Tenant

from .models import Certificate, Connection, Mailbox


def connection(tenant: Tenant) -> Connection:
    """The tenant's connection, created empty on first use (one per tenant)."""
    found, _ = Connection.objects.get_or_create(tenant=tenant)
    return found


def certificates(tenant: Tenant) -> QuerySet[Certificate]:
    """The tenant's certificates, newest first."""
    return Certificate.objects.filter(connection__tenant=tenant).order_by("-not_before", "-id")


def certificate(tenant: Tenant, certificate_id: int | str) -> Certificate:
    """One certificate of this tenant; 404 for missing and another tenant's alike."""
    try:
        return Certificate.objects.get(connection__tenant=tenant, pk=int(certificate_id))
    except (Certificate.DoesNotExist, ValueError, TypeError):
        raise Http404("no such certificate") from None


def certificates_lasting_past(tenant: Tenant, moment: dt.datetime) -> QuerySet[Certificate]:
    """The tenant's certificates that have not expired by `moment`, the longest-lasting first."""
    return Certificate.objects.filter(connection__tenant=tenant, not_after__gt=moment).order_by("-not_after")


def mailboxes(tenant: Tenant) -> QuerySet[Mailbox]:
    """Every directory user Microsoft 365 listed for the tenant, with or without a mailbox."""
    return Mailbox.objects.filter(tenant=tenant).order_by("user_principal_name")


def mailbox_count(tenant: Tenant) -> int:
    """How many users have an Exchange mailbox."""
    return Mailbox.objects.filter(tenant=tenant, has_mailbox=True).count()


def connections_to_check() -> list[int]:
    """Ids of the connections (of every tenant: the daily task's) with both IDs and a certificate."""
    configured = Connection.objects.filter(directory_id__isnull=False, client_id__isnull=False)
    return list(configured.filter(certificates__isnull=False).distinct().order_by("id").values_list("id", flat=True))


def connection_by_id(connection_id: int) -> Connection:
    """A connection by id, for tasks that carry ids only (no tenant to scope by)."""
    return Connection.objects.select_related("tenant").get(pk=connection_id)


def connection_ids() -> list[int]:
    """Ids of every connection (of every tenant: the hourly subscription upkeep's,
    which also removes the subscriptions of a connection that stopped working)."""
    return list(Connection.objects.order_by("id").values_list("id", flat=True))
