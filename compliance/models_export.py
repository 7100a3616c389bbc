"""eDiscovery exports and upload imports: one row each, its progress and outcome.

Tenant-owned: reach them through `compliance.exports` and `compliance.imports`
(the access functions and named writers), never through the managers elsewhere.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Export(models.Model):
    """Every message matching `query` that its creator may read, as a ZIP of
    `.eml` files or one mbox (in a ZIP), with `manifest.csv`.

    Built by a background task into the exports area (`compliance.exports`),
    downloadable until `expires_at` by its creator or the tenant's admins.
    """

    class Format(models.TextChoices):
        EML_ZIP = "eml-zip", "ZIP of .eml files"
        MBOX = "mbox", "mbox"

    class State(models.TextChoices):
        PENDING = "pending", "waiting to start"
        RUNNING = "running", "running"
        DONE = "done", "ready"
        FAILED = "failed", "failed"
        EXPIRED = "expired", "expired"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="exports")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    query = models.TextField(blank=True)
    # A selection of message ids instead of a query (None: the query's results).
    selection = models.JSONField(null=True, blank=True, default=None)
    format = models.CharField(max_length=8, choices=Format.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)  # of the file to download
    sha256 = models.CharField(max_length=64, blank=True)  # of the file to download
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    storage_key = models.CharField(max_length=255, blank=True)  # in the exports area (`exports.exports_bucket`)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set at each chunk while running: a builder silent for long has died (`exports.STALE_AFTER`).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="export_tenant_recent"),
            models.Index(fields=["state", "expires_at"], name="export_state_expiry"),
        ]

    def __str__(self) -> str:
        return f"export {self.public_id} ({self.state}) of tenant {self.tenant_id}"


class Import(models.Model):
    """An uploaded mbox, ZIP of `.eml` files or Outlook .pst, imported message by message
    through the journal's durable path (`archive.items.store_items`)."""

    class Format(models.TextChoices):
        MBOX = "mbox", "mbox"
        EML_ZIP = "eml-zip", "ZIP of .eml files"
        PST = "pst", "Outlook .pst"

    class State(models.TextChoices):
        PENDING = "pending", "waiting to start"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="imports")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    file_name = models.CharField(max_length=255)
    format = models.CharField(max_length=8, choices=Format.choices)
    size = models.BigIntegerField(default=0)  # of the upload
    spool_path = models.CharField(max_length=1000, blank=True)  # the upload until it is imported
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    # Progress: bytes (mbox) or entries (ZIP) read so far, of `extent`.
    position = models.BigIntegerField(default=0)
    extent = models.BigIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)  # messages read (stored, or listed as errors)
    stored = models.PositiveIntegerField(default=0)
    already_archived = models.PositiveIntegerField(default=0)  # their Message-ID was archived before
    error_count = models.PositiveIntegerField(default=0)
    # [{"item": "message 12 at byte 4711" / "file.eml", "error": "…"}], the first MAX_LISTED_ERRORS.
    errors = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)  # why the whole import failed
    created_at = models.DateTimeField(default=timezone.now)
    # Set at each batch while running: a runner silent for long has died (`imports.STALE_AFTER`).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="import_tenant_recent")]

    def __str__(self) -> str:
        return f"import {self.public_id} ({self.state}) of tenant {self.tenant_id}"
