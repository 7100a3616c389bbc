"""Models of the Microsoft 365 connection, each kept beside its logic.

One `Connection` per tenant (the customer's Azure app registration), its
`Certificate`s (the app's credential; private keys encrypted at rest) and the
`Mailbox`es Graph lists for the organization.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Connection(models.Model):
    """A tenant's Azure app registration: the directory and the app Graph knows."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="m365_connection")
    directory_id = models.UUIDField(null=True, blank=True)  # Azure's "Directory (tenant) ID"
    client_id = models.UUIDField(null=True, blank=True)  # Azure's "Application (client) ID"
    mail_from = models.EmailField(blank=True)
    sync_folders = models.BooleanField(default=False)
    # From Graph's /organization at the last successful test.
    organization_name = models.CharField(max_length=256, blank=True)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True)
    # What the last test found (organization, domains, roles, missing permissions, error): shown on the page.
    last_test_result = models.JSONField(default=dict, blank=True)
    mailboxes_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"m365 connection of tenant {self.tenant_id}"

    @property
    def is_configured(self) -> bool:
        return self.directory_id is not None and self.client_id is not None


class Certificate(models.Model):
    """An RSA key and its self-signed certificate, uploaded by the admin to the Azure app.

    The private key is stored encrypted (infra.secrets) and never leaves the
    server: no view, API, log line, repr or export shows it.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="certificates")
    common_name = models.CharField(max_length=64)
    org_unit = models.CharField(max_length=64, blank=True)
    organization = models.CharField(max_length=64, blank=True)
    locality = models.CharField(max_length=128, blank=True)
    state = models.CharField(max_length=128, blank=True)
    country = models.CharField(max_length=2, blank=True)
    # SHA-1 of the DER certificate, lower-case hex: what Azure shows, and (base64url) the JWT's x5t.
    thumbprint = models.CharField(max_length=40, unique=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    certificate_pem = models.TextField()
    private_key_encrypted = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"certificate {self.thumbprint} (until {self.not_after:%Y-%m-%d})"

    def __repr__(self) -> str:
        # Django's default repr is str(); spelled out so that the key can never sneak in.
        return f"<Certificate {self.pk} {self.thumbprint} not_after={self.not_after.isoformat()}>"

    def is_valid_at(self, when: Any = None) -> bool:
        now = when or timezone.now()
        return bool(self.not_before <= now < self.not_after)


class MailboxKind(models.TextChoices):
    USER = "user", "user"
    SHARED = "shared", "shared"
    ROOM = "room", "room"
    EQUIPMENT = "equipment", "equipment"
    OTHER = "other", "other"


class Mailbox(models.Model):
    """A user of the Microsoft 365 organization as Graph lists it, with or without a mailbox."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_mailboxes")
    graph_id = models.CharField(max_length=64)  # the user's object id (a GUID)
    user_principal_name = models.CharField(max_length=320)
    display_name = models.CharField(max_length=256, blank=True)
    primary_address = models.CharField(max_length=320, blank=True)  # lower-cased
    proxy_addresses = models.JSONField(default=list, blank=True)  # lower-cased SMTP addresses, primary first
    kind = models.CharField(max_length=16, choices=MailboxKind.choices, default=MailboxKind.USER)
    has_mailbox = models.BooleanField(default=True)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "graph_id"], name="m365_mailbox_once_per_tenant")]

    def __str__(self) -> str:
        return f"mailbox {self.user_principal_name} of tenant {self.tenant_id}"


class SyncedAlias(models.Model):
    """An alias that the mailbox sync made from a proxy address, so that it can also take it back.

    Aliases an admin added by hand have no such row and are never removed by the sync.
    """

    alias = models.OneToOneField("tenants.Alias", on_delete=models.CASCADE, related_name="m365_sync")
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="synced_aliases")

    def __str__(self) -> str:
        return f"alias {self.alias_id} from mailbox {self.mailbox_id}"


# The historical import (m365/importing.py) and folder synchronisation (m365/sync.py)
# keep their models beside their logic; the sync's signal receivers load with the app.
from m365 import signals  # noqa: E402,F401  (subscriptions follow their connection)
from m365.importing import ImportDay, ImportMailbox, ImportRun, ImportSource  # noqa: E402,F401
from m365.sync import FolderDelta, ItemWatermark, Notification, Subscription  # noqa: E402,F401
