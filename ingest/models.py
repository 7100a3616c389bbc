"""What the SMTP ingest records: one Delivery per tenant per accepted message."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Delivery(models.Model):
    """A message as received over SMTP, durably stored in a tenant's bucket.

    A message addressed to several tenants gives one Delivery per tenant,
    all sharing `queue_id`, the id in the `250 2.0.0 <id>` reply.
    """

    class Status(models.TextChoices):
        STORED = "stored", "stored"  # bytes durable and recorded: 250 was sent
        RECEIVED = "received", "received"  # the worker verified the stored object
        FAILED = "failed", "failed"  # the worker could not verify it (see error)
        ARCHIVED = "archived", "archived"  # unwrapped and merged into `message`
        PARSE_FAILED = "parse_failed", "parse failed"  # kept; see error, retried by `retry_failed`

    class Source(models.TextChoices):
        JOURNAL = "journal", "journal report"  # over SMTP: an MS-XJRNL envelope around the original
        MAILBOX = "mailbox", "mailbox copy"  # a mailbox item itself (Graph import or sync, archive.items)

    # Indexed by the composite indexes below, which lead with it: every
    # index is a page more to write for each batch the ingest commits.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="deliveries", db_index=False)
    queue_id = models.CharField(max_length=32, db_index=True)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    # The object holding the report's bytes: `size` bytes from `storage_offset`
    # (messages received together share one object, see ingest.pack).
    storage_key = models.CharField(max_length=255)
    storage_offset = models.BigIntegerField(default=0)
    mail_from = models.CharField(max_length=512, blank=True)
    rcpt_to = models.JSONField(default=list)  # this tenant's recipients, as sent
    peer_ip = models.GenericIPAddressField(null=True, blank=True)
    helo = models.CharField(max_length=255, blank=True)
    tls_version = models.CharField(max_length=32, blank=True)
    tls_cipher = models.CharField(max_length=128, blank=True)
    received_at = models.DateTimeField(default=timezone.now)  # indexed per tenant, below
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STORED)
    # A mailbox copy has no envelope (mail_from, rcpt_to, peer, TLS stay empty);
    # its mailbox, folder and item id are on its archive.MessageSource row.
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.JOURNAL)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # The report's X-OriginatorOrg, and whether it differs from the tenant's
    # known Microsoft 365 organization (archived anyway, flagged on Status).
    originator_org = models.CharField(max_length=253, blank=True)
    originator_mismatch = models.BooleanField(default=False)
    # The archived original this report carried; every report stays stored as evidence.
    message = models.ForeignKey(
        "archive.Message", on_delete=models.PROTECT, null=True, blank=True, related_name="deliveries"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "queue_id"], name="one_delivery_per_tenant_per_message")
        ]
        indexes = [
            models.Index(fields=["tenant", "-received_at"], name="delivery_tenant_recent"),
            models.Index(fields=["status", "enqueued_at"], name="delivery_sweep"),
            # Retention deletes a pack once no report refers to it (archive.actions.referenced_keys);
            # the reports of one pack share a key, so their entries land on one index page.
            models.Index(fields=["storage_key"], name="delivery_storage_key"),
        ]

    def __str__(self) -> str:
        return f"{self.queue_id} ({self.size} bytes, {self.status})"

    def read_report(self) -> bytes:
        """The report's bytes as received, checked against `sha256` (IntegrityError otherwise)."""
        from infra.storage import get_store

        return get_store().read_verified(
            self.tenant.bucket, self.storage_key, self.sha256, self.storage_offset, self.size
        )


# Models of the ingest's policy and statistics, and beat's state, live beside their logic.
from ingest.beatstate import BeatEntry as BeatEntry  # noqa: E402
from ingest.held import HeldMessage as HeldMessage  # noqa: E402
from ingest.policy import SenderNetwork as SenderNetwork  # noqa: E402
from ingest.stats import PublishFailureCount as PublishFailureCount  # noqa: E402
from ingest.stats import RejectionCount as RejectionCount  # noqa: E402
