"""The archive: one Message per original per tenant, the audit log, API tokens.

Tenant-owned rows: reach them through `tenants.access`; change them through
`archive.actions` (tests/test_access_layer.py enforces it).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Message(models.Model):
    """One archived original, merged from every journal report that carried it.

    `merge_key` is `mid:<Message-ID>`, or `sha:<SHA-256 of the original>` for
    an original without one.  Each report stays stored as evidence and points
    here through `ingest.Delivery.message`.  `version` bumps on every merge;
    the search backends never let an older version replace a newer one.
    """

    class IndexStatus(models.TextChoices):
        PENDING = "pending", "pending"  # changed since it was last indexed
        INDEXED = "indexed", "indexed"
        FAILED = "failed", "failed"  # its stored objects could not be read (see index_error)

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="messages")
    merge_key = models.CharField(max_length=300)
    message_id = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    from_display = models.TextField(blank=True)
    from_addresses = models.JSONField(default=list)
    envelope_sender = models.CharField(max_length=512, blank=True)
    on_behalf_of = models.CharField(max_length=512, blank=True)
    to = models.JSONField(default=list)  # header To, lower-cased addresses
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)  # header Bcc (rare: Bcc is in the envelope)
    # Union over all reports: [{"address", "kind", "expanded", "forwarded"}].
    envelope_recipients = models.JSONField(default=list)
    # Lower-cased addresses that make the message visible to a plain user.
    participants = models.JSONField(default=list)
    date = models.DateTimeField(db_index=True)  # the Date header, or when we received it
    size = models.BigIntegerField()  # of the original
    has_attachments = models.BooleanField(default=False)
    attachments = models.JSONField(default=list)  # [{"name", "content_type", "size", "skipped"}]
    # The attachments as the message page lists and serves them (`archive.parser.mime`),
    # worked out when archived so a page with thousands opens without parsing:
    # [{"n": download number, "name", "content_type", "size"}].  None for a
    # message archived before this was kept: computed (and kept) on its first view.
    attachment_list = models.JSONField(null=True, blank=True, default=None)
    original_sha256 = models.CharField(max_length=64)
    original_key = models.CharField(max_length=255)
    decrypted_sha256 = models.CharField(max_length=64, blank=True)
    decrypted_key = models.CharField(max_length=255, blank=True)
    # The extracted text (body, attachment names and text) as JSON in the bucket:
    # indexing reads it instead of parsing again; `reindex --reparse` rewrites it.
    text_sha256 = models.CharField(max_length=64, blank=True)
    text_key = models.CharField(max_length=255, blank=True)
    problems = models.JSONField(default=list)  # what the parser could not read
    version = models.PositiveIntegerField(default=1)
    index_status = models.CharField(max_length=16, choices=IndexStatus.choices, default=IndexStatus.PENDING)
    indexed_at = models.DateTimeField(null=True, blank=True)
    index_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "merge_key"], name="one_message_per_original")]
        indexes = [
            models.Index(fields=["tenant", "-date"], name="message_tenant_recent"),
            models.Index(fields=["index_status", "tenant"], name="message_index_backlog"),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} v{self.version} of tenant {self.tenant_id}"

    @property
    def has_decrypted(self) -> bool:
        return bool(self.decrypted_key)


class AuditEvent(models.Model):
    """Who searched, read, downloaded or exported what, and every admin action:
    the actor (`user`, and `token` for an API call), what it was done to
    (`target`), from where (`ip`) and when.  Read by the tenant's admins and auditors."""

    class Action(models.TextChoices):
        SEARCH = "search", "search"
        VIEW = "view", "view"
        DOWNLOAD = "download", "download"
        EXPORT = "export", "export"
        TOKEN_CREATED = "token-created", "API token created"
        TOKEN_REVOKED = "token-revoked", "API token revoked"
        # Admin actions (tenants.actions).
        INVITATION_SENT = "invitation-sent", "invitation sent"
        INVITATION_REVOKED = "invitation-revoked", "invitation revoked"
        INVITATION_ACCEPTED = "invitation-accepted", "invitation accepted"
        ROLE_CHANGED = "role-changed", "role changed"
        MEMBER_REMOVED = "member-removed", "member removed"
        ALIAS_ADDED = "alias-added", "alias added"
        ALIAS_REMOVED = "alias-removed", "alias removed"
        DOMAIN_ADDED = "domain-added", "domain added"
        DOMAIN_VERIFIED = "domain-verified", "domain verified"
        DOMAIN_REMOVED = "domain-removed", "domain removed"
        JOURNAL_TOKEN_ROTATED = "journal-token-rotated", "journal address rotated"
        SETTING_CHANGED = "setting-changed", "organization setting changed"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="audit_events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    # Kept as written, so the log still names someone whose account was deleted.
    actor_email = models.CharField(max_length=320, blank=True)
    token = models.ForeignKey("ApiToken", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=32, choices=Action.choices)
    target = models.CharField(max_length=400, blank=True)  # "erin@contoso.com", "contoso.com", …
    detail = models.JSONField(default=dict)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="audit_tenant_recent")]

    def __str__(self) -> str:
        return f"{self.action} by {self.user_id} in {self.tenant_id}"


class ApiToken(models.Model):
    """A Bearer token for `/api/v1/`; acts as the member who created it.

    Only the SHA-256 of the token is kept (the token has 256 random bits, so
    a fast hash is enough); the token itself is shown once, at creation.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="api_tokens")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)  # the first characters, to recognize a token
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"API token {self.prefix}… of tenant {self.tenant_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
