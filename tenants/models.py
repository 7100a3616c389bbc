"""Tenants, their members, their journal and API tokens, and the audit log.

Tenant-owned rows are reached through `tenants.access`, never queried
directly from views or tasks (tests/test_access_layer.py enforces it).
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra):
        if not email:
            raise ValueError("an email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)


class User(AbstractUser):
    """A person; signs in with an email address, not a user name."""

    username = None  # type: ignore[assignment]  # no user name: people sign in with their email address
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects: ClassVar[UserManager] = UserManager()  # type: ignore[assignment]  # ours makes users by email


class Tenant(models.Model):
    """A customer organization; lives in exactly one region."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    region = models.CharField(max_length=8)
    bucket = models.CharField(max_length=63, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The Microsoft 365 organization whose Exchange Online journals to us
    # (e.g. contoso.onmicrosoft.com); reports from another organization
    # (X-OriginatorOrg) are archived but flagged.  Blank: not known yet.
    m365_organization = models.CharField(max_length=253, blank=True)
    # Members who sign in with a password must have a second factor (TOTP);
    # sessions signed in with Microsoft are Entra's to protect (signin.mfa).
    require_mfa = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    AUDITOR = "auditor", "Auditor"
    USER = "user", "User"


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_membership_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.role} of {self.tenant_id}"

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)

    @property
    def sees_all_mail(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN, Role.AUDITOR)


class JournalToken(models.Model):
    """The secret part of a tenant's journal address.

    `expires_at` is null while the token is current; rotation sets it to the
    end of the grace period during which the old address still works.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="journal_tokens")
    token = models.CharField(max_length=63, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped on every change, so the ingest's cache can refresh incrementally.
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"journal token {self.token[:6]}… of tenant {self.tenant_id}"

    def is_valid(self, now=None) -> bool:
        return self.expires_at is None or self.expires_at > (now or timezone.now())


class Invitation(models.Model):
    """An admin's invitation to join a tenant with a role, sent by mail.

    Only the SHA-256 of the token in the link is kept: the token has 256
    random bits, so a fast hash is enough and a database leak opens nothing.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()  # lower-cased
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["tenant", "email"], name="invitation_tenant_email")]

    def __str__(self) -> str:
        return f"invitation of {self.email} to {self.tenant_id} as {self.role}"

    def is_pending(self, now=None) -> bool:
        return self.accepted_at is None and self.expires_at > (now or timezone.now())


class Alias(models.Model):
    """Another address whose mail a member may search, assigned by an admin.

    `tenant` repeats `membership.tenant` so that an address can be unique
    per tenant in the database.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="aliases")
    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="aliases")
    address = models.EmailField()  # lower-cased
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "address"], name="alias_once_per_tenant")]

    def __str__(self) -> str:
        return f"alias {self.address} of membership {self.membership_id}"


class Domain(models.Model):
    """A mail domain a tenant claims; verified by a DNS TXT record.

    The SMTP ingest routes mail to `archive@archive.<site>` by the sender's
    domain among verified domains (`name`, `tenant_id`, `updated_at`), so a
    name can be verified by one tenant of the region only.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="domains")
    name = models.CharField(max_length=253)  # lower-case A-labels, no trailing dot
    txt_token = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)
    # Bumped on every change, so the ingest's cache can refresh incrementally.
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    TXT_PREFIX = "_archiva"
    TXT_VALUE_PREFIX = "archiva-verification="

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="domain_once_per_tenant"),
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(verified_at__isnull=False), name="domain_verified_once"
            ),
        ]

    def __str__(self) -> str:
        return f"domain {self.name} of {self.tenant_id}"

    @property
    def is_verified(self) -> bool:
        return self.verified_at is not None

    @property
    def txt_name(self) -> str:
        """Where the TXT record goes: `_archiva.<domain>`."""
        return f"{self.TXT_PREFIX}.{self.name}"

    @property
    def txt_value(self) -> str:
        return f"{self.TXT_VALUE_PREFIX}{self.txt_token}"


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
        # Retention and legal hold (compliance.retention, compliance.holds).
        RETENTION_PROPOSED = "retention-proposed", "retention change proposed"
        RETENTION_APPROVED = "retention-approved", "retention change approved"
        RETENTION_CANCELLED = "retention-cancelled", "retention change cancelled"
        RETENTION_CHANGED = "retention-changed", "retention in force changed"
        RETENTION_APPLIED = "retention-applied", "retention run"
        HOLD_CREATED = "hold-created", "legal hold created"
        HOLD_RELEASED = "hold-released", "legal hold released"
        # eDiscovery export and upload import (compliance).
        EXPORT_CREATED = "export-created", "export created"
        EXPORT_FINISHED = "export-finished", "export finished"
        EXPORT_DOWNLOADED = "export-downloaded", "export downloaded"
        IMPORT_STARTED = "import-started", "import started"
        IMPORT_FINISHED = "import-finished", "import finished"
        M365_SYNCED = "m365-synced", "Microsoft 365 mailboxes synchronised"
        AUDIT_EXPORTED = "audit-exported", "audit log exported"
        # Two-factor authentication (signin.mfa): a member's own methods.
        MFA_ADDED = "mfa-added", "two-factor method added"
        MFA_REMOVED = "mfa-removed", "two-factor method removed"
        # Sign-in with Microsoft Entra ID (signin).
        SIGNIN_REFUSED = "signin-refused", "Microsoft sign-in refused"
        MEMBER_JOINED = "member-joined", "member joined by Microsoft sign-in"
        # Billing (billing.actions, billing.webhooks).
        BILLING_SUBSCRIBED = "billing-subscribed", "subscription started"
        BILLING_CANCELED = "billing-canceled", "subscription canceled"
        BILLING_RESUMED = "billing-resumed", "subscription resumed"
        BILLING_EMAIL_CHANGED = "billing-email-changed", "billing email changed"
        BILLING_QUANTITY_CHANGED = "billing-quantity", "billed mailboxes changed"
        BILLING_STATUS_CHANGED = "billing-status", "billing status changed"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="audit_events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    # Kept as written, so the log still names someone whose account was deleted.
    actor_email = models.CharField(max_length=320, blank=True)
    token = models.ForeignKey("ApiToken", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The API token as written ("name (prefix…)"), covered by the hash chain; `token` goes with the account.
    token_label = models.CharField(max_length=120, blank=True)
    action = models.CharField(max_length=32, choices=Action.choices)
    target = models.CharField(max_length=400, blank=True)  # "erin@contoso.com", "contoso.com", …
    detail = models.JSONField(default=dict)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The tenant's hash chain (tenants.audit_chain): `hash` is SHA-256 of
    # `prev_hash` and this event's content, so an edited, removed or inserted
    # row no longer matches the events after it.  `seq` is the event's place
    # in the chain (1, 2, …), given when it is linked, shortly after it is
    # written (`tenants.audit.link_pending`); until then the three are empty.
    seq = models.BigIntegerField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    class Meta:
        db_table = "archive_auditevent"  # made by the archive app, moved here without copying
        indexes = [models.Index(fields=["tenant", "-created_at"], name="audit_tenant_recent")]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "seq"], name="one_audit_event_per_chain_place"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.user_id} in {self.tenant_id}"


class AuditChain(models.Model):
    """The head of a tenant's audit hash chain, and the lock its linker takes.

    Whoever links the tenant's pending events (`tenants.audit.link_pending`)
    holds this row's lock meanwhile (a row lock on PostgreSQL, the write lock
    on SQLite), so two linkers never both link to the same previous event;
    `events` is the head's place in the chain.  Also keeps the last verification's
    outcome for System Status (verifying on every page view would read the whole chain).
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.PROTECT, primary_key=True, related_name="audit_chain")
    head_hash = models.CharField(max_length=64, blank=True)  # "" until the first event
    head_event_id = models.BigIntegerField(null=True, blank=True)
    events = models.BigIntegerField(default=0)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_ok = models.BooleanField(null=True)
    verified_events = models.BigIntegerField(default=0)
    broken_event_id = models.BigIntegerField(null=True, blank=True)
    broken_event_at = models.DateTimeField(null=True, blank=True)
    broken_reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"audit chain of tenant {self.tenant_id}: {self.events} events"


class AuditRoot(models.Model):
    """A day's root: the chain head's hash at the end of the daily task, per tenant.

    Published elsewhere (an operator's mail, an external log) it proves the
    chain up to that event has not been rewritten since.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="audit_roots")
    day = models.DateField()
    hash = models.CharField(max_length=64, blank=True)
    event_id = models.BigIntegerField(null=True, blank=True)
    events = models.BigIntegerField(default=0)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="one_audit_root_per_tenant_per_day")]

    def __str__(self) -> str:
        return f"audit root of tenant {self.tenant_id} on {self.day}: {self.hash[:12]}"


class TokenScope(models.TextChoices):
    SEARCH_READ = "search:read", "search:read — search and download"
    ADMIN = "admin", "admin — everything its creator's role allows"


class ApiToken(models.Model):
    Scope = TokenScope

    """A Bearer token for `/api/v1/`; acts as the member who created it, with
    that member's current role, narrowed by its scope, until it expires.

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
    # What the token may do: search and download only, or all its creator's role allows.
    # Tokens made before scopes existed keep working as they did ("admin").
    scope = models.CharField(max_length=20, choices=TokenScope.choices, default=TokenScope.ADMIN)
    expires_at = models.DateTimeField(null=True, blank=True)  # None: until revoked

    class Meta:
        db_table = "archive_apitoken"  # made by the archive app, moved here without copying

    def __str__(self) -> str:
        return f"API token {self.prefix}… of tenant {self.tenant_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
