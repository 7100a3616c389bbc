"""Models of the imapjournal app: a tenant's IMAP journal mailbox and where its poller stands.

One `ImapJournal` per tenant: the server and the journal mailbox Exchange
delivers journal reports to (for customers who cannot open port 25 to our
SMTP ingest), signed in with XOAUTH2 and an app-only token of the tenant's
Microsoft 365 connection.  Beside the settings, the poller's state: the
mailbox's UIDVALIDITY and the highest UID it made durable, its last error
and the backoff it is in.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant

DEFAULT_HOST = "outlook.office365.com"
DEFAULT_PORT = 993
DEFAULT_FOLDER = "Archived"


class ImapJournal(models.Model):
    """A tenant's journal mailbox read over IMAP (its settings and its poller's state)."""

    class AfterArchive(models.TextChoices):
        DELETE = "delete", "delete it from the mailbox"
        MOVE = "move", "move it to a folder"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="imap_journal")
    host = models.CharField(max_length=253, default=DEFAULT_HOST)
    port = models.PositiveIntegerField(default=DEFAULT_PORT)
    mailbox = models.EmailField(max_length=320, blank=True)  # the journal mailbox's address, lower-cased
    enabled = models.BooleanField(default=False)
    after_archive = models.CharField(max_length=8, choices=AfterArchive.choices, default=AfterArchive.DELETE)
    move_folder = models.CharField(max_length=200, default=DEFAULT_FOLDER)

    # The poller's state.  `last_uid` is the highest UID of `uidvalidity`
    # whose message is durably stored and recorded: anything at or below it
    # that is still in INBOX only waits for its delete or move.
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    last_uid = models.BigIntegerField(default=0)
    archived = models.BigIntegerField(default=0)  # reports stored from this mailbox, in all
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)  # in a row; the backoff grows with it
    backoff_until = models.DateTimeField(null=True, blank=True)

    # What the last "Test connection" found (ok, count, error), shown on the page.
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_result = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"IMAP journal {self.mailbox or '(no mailbox)'} of tenant {self.tenant_id}"

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_configured(self) -> bool:
        return bool(self.host and self.port and self.mailbox)
