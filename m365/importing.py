"""The bookkeeping of a historical import from Microsoft 365.

An `ImportRun` is one request ("all mailboxes" or a list, from a date); it
has an `ImportMailbox` per mailbox and, per mailbox, an `ImportSource` per
folder (and one for the calendar and one for the contacts).  A source keeps
the Graph link to fetch next: saved only after the items of the pages before
it are durable (`archive.items.store_items`), so a restart, even after
kill -9, goes on from there and fetches at most one batch again, which the
archive's idempotence absorbs.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class ImportRun(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "queued"  # recorded, waiting for a worker
        RUNNING = "running", "running"  # a worker has it (see heartbeat_at)
        PAUSED = "paused", "paused"  # stopped by an admin; resumes where it stopped
        DONE = "done", "done"  # every mailbox finished, some perhaps with an error
        FAILED = "failed", "failed"  # could not go on at all (see error)

    ACTIVE = (State.QUEUED, State.RUNNING, State.PAUSED)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_imports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    all_mailboxes = models.BooleanField(default=True)
    since = models.DateField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by the worker that runs it, every few seconds: a run whose heartbeat
    # is older than ARCHIVA_M365_IMPORT_STALE has lost its worker and is taken over.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    owner = models.CharField(max_length=64, blank=True)
    slice_started_at = models.DateTimeField(null=True, blank=True)  # when the current owner claimed it
    # Seconds spent running, over every slice: the rate and the estimate use it, so a pause does not count.
    active_seconds = models.FloatField(default=0)
    messages_imported = models.BigIntegerField(default=0)
    items_imported = models.BigIntegerField(default=0)  # events and contacts
    bytes_imported = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="m365_import_tenant_recent")]

    def __str__(self) -> str:
        return f"import {self.pk} of tenant {self.tenant_id} ({self.state})"


class ImportMailbox(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    run = models.ForeignKey(ImportRun, on_delete=models.CASCADE, related_name="mailboxes")
    address = models.CharField(max_length=320)  # primary SMTP address, lower-case
    user_id = models.CharField(max_length=200)  # the Graph user id
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    sources_listed = models.BooleanField(default=False)  # its folders are known (ImportSource rows)
    messages_imported = models.BigIntegerField(default=0)
    items_imported = models.BigIntegerField(default=0)
    # Messages Graph counts in its folders (totalItemCount): the estimate of time left uses it.
    messages_expected = models.BigIntegerField(default=0)
    throttled = models.PositiveIntegerField(default=0)  # slices that ended with Exchange still throttling
    skipped = models.JSONField(default=list)  # items gone between listing and download: [{"id", "reason"}]
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "address"], name="m365_import_mailbox_once")]

    def __str__(self) -> str:
        return f"{self.address} ({self.state})"


class ImportSource(models.Model):
    """One folder of a mailbox (or its calendar, or its contacts) and how far its import got."""

    class Kind(models.TextChoices):
        MAIL = "mail", "mail"
        EVENT = "event", "event"
        CONTACT = "contact", "contact"

    mailbox = models.ForeignKey(ImportMailbox, on_delete=models.CASCADE, related_name="sources")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.MAIL)
    graph_id = models.CharField(max_length=400)  # the folder's id ("" for the calendar and contacts)
    path = models.CharField(max_length=1000)  # "Inbox/Projects"
    next_link = models.TextField(blank=True)  # where to go on: the link after the last durable batch
    delta_link = models.TextField(blank=True)  # the end of the initial round (for later sync)
    done = models.BooleanField(default=False)
    total_items = models.BigIntegerField(default=0)
    imported = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mailbox", "kind", "graph_id"], name="m365_import_source_once")]

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


class ImportDay(models.Model):
    """Items imported per tenant per day (UTC): Status → Charts."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    messages = models.BigIntegerField(default=0)
    items = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="m365_import_day_once")]

    def __str__(self) -> str:
        return f"{self.day}: {self.messages}"
