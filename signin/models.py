"""Sign-in with Microsoft Entra ID: a tenant's switch, its role rules, and who signed in how.

`EntraSignin` is the tenant's "Sign in with Microsoft" (it uses the
Microsoft 365 connection's directory, app and certificate); `RoleRule`s are
evaluated in `position` order at each sign-in; `EntraIdentity` ties an
account to the directory object (`oid`) it signed in as, so a renamed user
keeps their account.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Role, Tenant


class EntraSignin(models.Model):
    """A tenant's "Sign in with Microsoft": on or off, and the role given when no rule matches."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="entra_signin")
    enabled = models.BooleanField(default=False)
    default_role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"entra sign-in of tenant {self.tenant_id} ({'on' if self.enabled else 'off'})"


class RuleAttribute(models.TextChoices):
    MEMBER_OF = "memberOf", "memberOf (a group or directory role)"
    DEPARTMENT = "department", "department"
    JOB_TITLE = "jobTitle", "job title"


class RoleRule(models.Model):
    """ "attribute = value → role"; the first rule that matches a person gives their role."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="role_rules")
    position = models.PositiveIntegerField()
    attribute = models.CharField(max_length=16, choices=RuleAttribute.choices)
    value = models.CharField(max_length=256)  # compared without regard to case
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"{self.attribute} = {self.value} → {self.role}"


class EntraIdentity(models.Model):
    """The directory object (tid, oid) an account signed in as, in one tenant."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="entra_identities")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="entra_identities")
    directory_id = models.UUIDField()
    object_id = models.UUIDField()
    created_at = models.DateTimeField(default=timezone.now)
    last_signin_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "object_id"], name="entra_identity_once_per_tenant"),
            models.UniqueConstraint(fields=["tenant", "user"], name="entra_identity_one_per_member"),
        ]

    def __str__(self) -> str:
        return f"entra identity {self.object_id} of user {self.user_id}"
