"""The one way into tenant data.

Views and tasks reach tenant-owned rows only through these functions.
They take the user (or the tenant) and answer 404 alike for "missing" and
"belongs to another tenant", so nothing leaks the existence of others' data.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Case, IntegerField, QuerySet, Sum, Value, When
from django.http import Http404

from archive.models import Message
from ingest.models import Delivery, RejectionCount
from tenants.models import Alias, ApiToken, AuditEvent, Domain, Invitation, JournalToken, Membership, Role, Tenant, User


def membership_for(user: User) -> Membership:
    """The user's membership (the first, for a member of several); 404 if none."""
    if not user.is_authenticated:
        raise Http404("not a member")
    membership = Membership.objects.select_related("tenant").filter(user=user).order_by("id").first()
    if membership is None:
        raise Http404("not a member")
    return membership


def current_token(tenant: Tenant) -> JournalToken:
    token = JournalToken.objects.filter(tenant=tenant, expires_at__isnull=True).order_by("-created_at").first()
    if token is None:
        raise Http404("no journal token")
    return token


def tokens_in_grace(tenant: Tenant) -> QuerySet[JournalToken]:
    from django.utils import timezone

    return JournalToken.objects.filter(tenant=tenant, expires_at__gt=timezone.now()).order_by("-created_at")


def deliveries(tenant: Tenant) -> QuerySet[Delivery]:
    return Delivery.objects.filter(tenant=tenant)


def foreign_originators(tenant: Tenant) -> QuerySet:
    """Organizations (X-OriginatorOrg) of flagged reports, by name."""
    return (
        deliveries(tenant)
        .filter(originator_mismatch=True)
        .values_list("originator_org", flat=True)
        .order_by("originator_org")
        .distinct()
    )


def rejections_by_reason(tenant: Tenant, since: datetime) -> dict[str, int]:
    """How many deliveries to this tenant the ingest refused since then, by reason."""
    rows = (
        RejectionCount.objects.filter(tenant=tenant, hour__gte=since.replace(minute=0, second=0, microsecond=0))
        .values("reason")
        .annotate(total=Sum("count"))
        .order_by("-total")
    )
    return {row["reason"]: row["total"] for row in rows}


def delivery(tenant: Tenant, delivery_id: int) -> Delivery:
    try:
        return Delivery.objects.get(tenant=tenant, pk=delivery_id)
    except (Delivery.DoesNotExist, ValueError, TypeError):
        raise Http404("no such delivery") from None


# --- the archive -----------------------------------------------------------


def membership_in(user: User, tenant: Tenant) -> Membership:
    """The user's membership of this tenant; 404 if none."""
    membership = Membership.objects.select_related("tenant", "user").filter(user=user, tenant=tenant).first()
    if membership is None:
        raise Http404("not a member")
    return membership


def mail_addresses(membership: Membership) -> list[str] | None:
    """None when the member sees all of the tenant's mail, else the addresses
    that scope it: verified addresses plus aliases an admin assigned."""
    if membership.sees_all_mail:
        return None
    return addresses_for(membership)


def search_scope(membership: Membership):
    """The one place a search gets its tenant filter and, for a plain user, their addresses.

    An empty address list (a user with no verified address) matches nothing.
    """
    from search.backends.base import Scope

    return Scope(tenant_id=membership.tenant_id, addresses=mail_addresses(membership))


def may_read(addresses: list[str] | None, message: Message) -> bool:
    if addresses is None:
        return True
    return not set(addresses).isdisjoint(message.participants)


def messages(tenant: Tenant) -> QuerySet[Message]:
    """All archived messages of a tenant (for counts and maintenance, not for people)."""
    return Message.objects.filter(tenant=tenant)


def message_for(membership: Membership, message_id) -> Message:
    """The message if this member may read it: admins and auditors any of the
    tenant's, a plain user only one they sent or received.  404 alike for
    missing, another tenant's, and not yours."""
    try:
        message = Message.objects.get(tenant_id=membership.tenant_id, pk=int(message_id))
    except (Message.DoesNotExist, ValueError, TypeError):
        raise Http404("no such message") from None
    if not may_read(mail_addresses(membership), message):
        raise Http404("no such message")
    return message


def messages_for(membership: Membership, ids: list[int]) -> list[Message]:
    """The readable messages among `ids` (search hits), in the order given."""
    addresses = mail_addresses(membership)
    found = Message.objects.filter(tenant_id=membership.tenant_id, pk__in=ids)
    by_id = {m.pk: m for m in found if may_read(addresses, m)}
    return [by_id[i] for i in ids if i in by_id]


def deliveries_of(message: Message) -> QuerySet[Delivery]:
    """The journal reports that carried this message (evidence)."""
    return Delivery.objects.filter(tenant_id=message.tenant_id, message=message).order_by("received_at", "id")


def parse_failures(tenant: Tenant) -> QuerySet[Delivery]:
    return Delivery.objects.filter(tenant=tenant, status=Delivery.Status.PARSE_FAILED).order_by("-received_at")


def tenant_by_reference(reference: str) -> Tenant:
    """A tenant by public id or exact name, for operators' commands; LookupError if none or ambiguous."""
    import uuid

    try:
        return Tenant.objects.get(public_id=uuid.UUID(reference))
    except (ValueError, Tenant.DoesNotExist):
        pass
    found = list(Tenant.objects.filter(name=reference)[:2])
    if len(found) != 1:
        raise LookupError(f"{'no' if not found else 'more than one'} tenant named {reference!r}")
    return found[0]


def audit_events(tenant: Tenant) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(tenant=tenant).select_related("user", "token").order_by("-created_at", "-id")


def api_tokens(tenant: Tenant) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(tenant=tenant).select_related("created_by").order_by("-created_at", "-id")


def api_token(tenant: Tenant, token_id) -> ApiToken:
    try:
        return ApiToken.objects.get(tenant=tenant, pk=int(token_id))
    except (ApiToken.DoesNotExist, ValueError, TypeError):
        raise Http404("no such token") from None


def membership_for_api_token(secret: str) -> tuple[Membership, ApiToken] | None:
    """Who a Bearer token acts for: its creator, in the token's tenant, with the
    creator's current role.  None for an unknown or revoked token, or when the
    creator is no longer a member."""
    from tenants.api_tokens import hash_token

    token = ApiToken.objects.select_related("tenant").filter(token_hash=hash_token(secret)).first()
    if token is None or not token.is_active:
        return None
    membership = (
        Membership.objects.select_related("tenant", "user")
        .filter(user_id=token.created_by_id, tenant_id=token.tenant_id, user__is_active=True)
        .first()
    )
    return (membership, token) if membership else None


# --- the team ----------------------------------------------------------------


def members(tenant: Tenant) -> QuerySet[Membership]:
    """The tenant's memberships with their users and aliases, owners first."""
    order = {Role.OWNER: 0, Role.ADMIN: 1, Role.AUDITOR: 2, Role.USER: 3}
    rank = Case(*(When(role=r, then=Value(i)) for r, i in order.items()), output_field=IntegerField())
    return (
        Membership.objects.filter(tenant=tenant)
        .select_related("user")
        .prefetch_related("aliases")
        .annotate(role_rank=rank)
        .order_by("role_rank", "user__email")
    )


def member(tenant: Tenant, membership_id) -> Membership:
    """One membership of this tenant; 404 for missing and another tenant's alike."""
    try:
        return Membership.objects.select_related("user", "tenant").get(tenant=tenant, pk=int(membership_id))
    except (Membership.DoesNotExist, ValueError, TypeError):
        raise Http404("no such member") from None


def owners(tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER)


def alias(tenant: Tenant, alias_id) -> Alias:
    try:
        return Alias.objects.select_related("membership").get(tenant=tenant, pk=int(alias_id))
    except (Alias.DoesNotExist, ValueError, TypeError):
        raise Http404("no such alias") from None


def addresses_for(membership: Membership) -> list[str]:
    """The addresses whose mail this member may search as a plain user.

    Their verified addresses (allauth's EmailAddress, verified only) plus the
    aliases an admin assigned them in this tenant; lower-cased, sorted, no
    duplicates.  Unverified addresses never count: anyone can type one.
    """
    from allauth.account.models import EmailAddress

    verified = EmailAddress.objects.filter(user_id=membership.user_id, verified=True).values_list("email", flat=True)
    aliases = Alias.objects.filter(membership=membership).values_list("address", flat=True)
    return sorted({address.strip().lower() for address in [*verified, *aliases] if address})


def pending_invitations(tenant: Tenant) -> QuerySet[Invitation]:
    from django.utils import timezone

    return (
        Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation(tenant: Tenant, invitation_id) -> Invitation:
    try:
        return Invitation.objects.get(tenant=tenant, pk=int(invitation_id), accepted_at__isnull=True)
    except (Invitation.DoesNotExist, ValueError, TypeError):
        raise Http404("no such invitation") from None


def invitation_by_token(token: str) -> Invitation:
    """The pending invitation a link's token names; 404 when unknown, used or expired.

    The tenant comes from this lookup only (like a journal token).
    """
    from tenants.tokens import hash_secret

    found = Invitation.objects.select_related("tenant", "invited_by").filter(token_hash=hash_secret(token)).first()
    if found is None or not found.is_pending():
        raise Http404("no such invitation")
    return found


# --- domains -----------------------------------------------------------------


def domains(tenant: Tenant) -> QuerySet[Domain]:
    return Domain.objects.filter(tenant=tenant).order_by("name")


def verified_domains(tenant: Tenant) -> QuerySet[Domain]:
    return Domain.objects.filter(tenant=tenant, verified_at__isnull=False).order_by("name")


def domain(tenant: Tenant, domain_id) -> Domain:
    try:
        return Domain.objects.get(tenant=tenant, pk=int(domain_id))
    except (Domain.DoesNotExist, ValueError, TypeError):
        raise Http404("no such domain") from None


def failed_deliveries(tenant: Tenant | None, statuses: list[str]) -> QuerySet[Delivery]:
    """Reports that failed (parse or verification), of one tenant or all: for operators' commands."""
    found = Delivery.objects.select_related("tenant").filter(status__in=statuses)
    return (found.filter(tenant=tenant) if tenant is not None else found).order_by("received_at", "id")
