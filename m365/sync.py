"""Models of folder, calendar and contact synchronisation: Graph change
subscriptions per mailbox and the notifications Graph posts to `/o365`.

A notification is stored (one row per item of Graph's batch, in one INSERT)
before `/o365` answers 202, and processed by a worker afterwards; the row is
the durable record, the broker only a hint (a sweep publishes what a broken
broker lost).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Subscription(models.Model):
    """One Graph change-notification subscription on a mailbox's messages."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        REMOVED = "removed", "Removed"  # deleted by us, or by Graph (subscriptionRemoved)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_subscriptions")
    # The customer's directory (Entra tenant) id: every notification names it,
    # and one that names another directory is refused.
    directory_id = models.CharField(max_length=36)
    user_id = models.CharField(max_length=64)  # the mailbox owner's Graph user id
    mailbox = models.CharField(max_length=254)  # its primary SMTP address, lower-case
    resource = models.CharField(max_length=300)  # e.g. users/{id}/messages
    graph_id = models.CharField(max_length=64, unique=True)  # Graph's subscription id
    # SHA-256 of the clientState we gave Graph (256 random bits: a plain hash
    # cannot be brute-forced, and the secret itself is never stored or logged).
    client_state_sha256 = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    renewed_at = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)  # the last renewal or resync failure

    class Meta:
        indexes = [models.Index(fields=["state", "expires_at"])]
        constraints = [
            # Two reconciles at once (the hourly one, a save's) must not both subscribe a mailbox.
            models.UniqueConstraint(
                fields=["tenant", "user_id"],
                condition=models.Q(state="active"),
                name="m365_one_active_subscription_per_mailbox",
            )
        ]

    def __str__(self) -> str:
        return f"{self.resource} ({self.state}, {self.graph_id})"


class Notification(models.Model):
    """One item of a notification batch Graph posted, stored before we answered 202."""

    class Kind(models.TextChoices):
        CHANGE = "change", "Change"  # created / updated / deleted
        LIFECYCLE = "lifecycle", "Lifecycle"  # reauthorizationRequired / subscriptionRemoved / missed

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_notifications")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    event = models.CharField(max_length=40)  # changeType or lifecycleEvent
    # The item as Graph sent it, without its clientState (the secret stays out of the database).
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["processed_at", "received_at"]),  # the sweep
            models.Index(fields=["tenant", "received_at"]),  # the charts
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.event} of {self.subscription_id} at {self.received_at:%Y-%m-%d %H:%M:%S}"


class FolderDelta(models.Model):
    """Where the last resync of one mailbox folder stopped (Graph's deltaLink),
    kept per mailbox rather than per subscription so a recreated subscription
    resyncs only what changed."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_folder_deltas")
    user_id = models.CharField(max_length=64)
    folder_id = models.CharField(max_length=200)
    delta_link = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user_id", "folder_id"], name="m365_folderdelta_unique"),
        ]

    def __str__(self) -> str:
        return f"delta of folder {self.folder_id} of {self.user_id}"


class ItemWatermark(models.Model):
    """The newest lastModifiedDateTime of a mailbox's events or contacts
    archived so far: the next periodic read stores only what changed since
    (items of that very second are read again, harmlessly: storing is
    idempotent, and an edit within the same second is not missed)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="m365_item_watermarks")
    user_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)  # event / contact
    modified_until = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user_id", "kind"], name="m365_itemwatermark_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}s of {self.user_id} until {self.modified_until:%Y-%m-%d %H:%M:%S}"
