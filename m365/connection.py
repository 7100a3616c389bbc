"""The connection to a customer's Microsoft 365: its settings, certificates and the test.

"Test connection" gets an app-only token with the connection's certificate,
reads `/organization` and `/domains`, and names each permission the token
lacks with what it disables.  A successful test also takes over what Graph
knows for sure: the organization (the X-OriginatorOrg check), the verified
domains (ownership proven by the admin's consent) and the mailbox list.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
from django.db import transaction
from django.utils import timezone

from tenants import actions
from tenants.actions import ActionRefused
from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

from . import access
from .certificates import Subject, create_certificate
from .directory import SyncResult, sync_mailboxes
from .graph import Graph, GraphError
from .models import Certificate, Connection

log = logging.getLogger(__name__)

# The application permissions to grant, each with what goes missing without it.
PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("User.Read.All", "the mailbox list and members' aliases from their proxy addresses"),
    ("Directory.Read.All", "reading the directory (users, organization and domains) as one permission"),
    ("Organization.Read.All", "the organization's name and its Microsoft 365 domain (the X-OriginatorOrg check)"),
    ("Domain.Read.All", "verifying your domains from Microsoft 365 without DNS records"),
    ("Mail.Read", "historical import, folder synchronisation and change notifications"),
    ("Mail.Send", "sending notices from the “Mail from” address"),
    ("Calendars.Read", "archiving calendars"),
    ("Contacts.Read", "archiving contacts"),
    ("IMAP.AccessAsApp", "IMAP journaling"),
)
# Any one of these is enough for what the test reads (Directory.Read.All covers all three).
NEEDS = {
    "organization": {"Organization.Read.All", "Directory.Read.All"},
    "domains": {"Domain.Read.All", "Directory.Read.All"},
    "users": {"User.Read.All", "Directory.Read.All"},
}
SETTING = "m365.connection"
Action = AuditEvent.Action


class FieldError(ValueError):
    """A connection field is unusable; the message names it."""


def connection_for(tenant: Tenant) -> Connection:
    """The tenant's connection, created empty on first use (one per tenant)."""
    return access.connection(tenant)


def parse_guid(name: str, value: Any) -> uuid.UUID | None:
    """A GUID as Azure shows it ("" or None: unset); ValueError naming the field otherwise."""
    text = str(value or "").strip().strip("{}")
    if not text:
        return None
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise FieldError(f"{name}: not a GUID (like 72f988bf-86f1-41af-91ab-2d7cd011db47)") from None
    if len(text) != 36:
        raise FieldError(f"{name}: write the GUID with its dashes, as Azure shows it")
    return parsed


def update_connection(
    actor: Membership,
    *,
    directory_id: uuid.UUID | None,
    client_id: uuid.UUID | None,
    mail_from: str,
    sync_folders: bool,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> Connection:
    """Save the connection's fields (already validated); audited with what changed."""
    with transaction.atomic():
        connection = Connection.objects.select_for_update().get(pk=connection_for(actor.tenant).pk)
        old = settings_of(connection)
        connection.directory_id = directory_id
        connection.client_id = client_id
        connection.mail_from = mail_from.strip().lower()
        connection.sync_folders = sync_folders
        new = settings_of(connection)
        if new == old:
            return connection
        if old["tenant_id"] != new["tenant_id"] or old["client_id"] != new["client_id"]:
            # Another app or directory: the last test says nothing about it.
            connection.last_test_ok = None
            connection.last_test_result = {}
        connection.save()
        changed = {k: {"old": old[k], "new": new[k]} for k in new if new[k] != old[k]}
        record(actor, SETTING, ip, token, changed=changed)
    return connection


def settings_of(connection: Connection) -> dict[str, Any]:
    """The connection's settings as the API shows them."""
    return {
        "tenant_id": str(connection.directory_id) if connection.directory_id else None,
        "client_id": str(connection.client_id) if connection.client_id else None,
        "mail_from": connection.mail_from,
        "sync_folders": connection.sync_folders,
    }


def record(actor: Membership | None, target: str, ip: str | None, token: ApiToken | None, **detail: Any) -> None:
    """An audit entry for a change to the connection (none without a person behind it), with the API token used."""
    if actor is not None:
        record_event(actor, Action.SETTING_CHANGED, detail, ip=ip, target=target, token=token)


def new_certificate(
    actor: Membership, subject: Subject, ip: str | None = None, token: ApiToken | None = None
) -> Certificate:
    """A new certificate for the tenant's connection; audited (thumbprint and expiry, never the key)."""
    with transaction.atomic():
        certificate = create_certificate(connection_for(actor.tenant), subject)
        record(
            actor,
            "m365.certificate",
            ip,
            token,
            created=certificate.thumbprint,
            not_after=certificate.not_after.isoformat(),
            subject=subject.checked().common_name,
        )
    return certificate


EXPIRY_WARNING = dt.timedelta(days=30)


def expiring_certificate(tenant: Tenant, now: dt.datetime | None = None) -> Certificate | None:
    """The certificate to replace soon: when none of the connection's lasts beyond 30 days, the one lasting longest.

    None when some certificate lasts longer (rotation done) or there are none.
    """
    moment = now or timezone.now()
    newest = access.certificates_lasting_past(tenant, moment - EXPIRY_WARNING).first()
    if newest is None or newest.not_after > moment + EXPIRY_WARNING:
        return None
    return newest


def certificates(connection: Connection) -> list[Certificate]:
    """The connection's certificates, newest first."""
    return list(access.certificates(connection.tenant))


# --- the test -------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What a connection test found; stored on the connection and shown on the page and in the API."""

    ok: bool
    tested_at: str
    organization: str = ""
    initial_domain: str = ""
    verified_domains: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    domains_taken: list[dict[str, str]] = field(default_factory=list)
    mailboxes: int | None = None
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def missing_permissions(roles: set[str]) -> list[dict[str, str]]:
    """Each permission of PERMISSIONS the token lacks, with what it disables."""
    return [{"permission": name, "disables": what} for name, what in PERMISSIONS if name not in roles]


def check_connection(
    connection: Connection,
    *,
    actor: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
    session: requests.Session | None = None,
) -> CheckResult:
    """Try the connection against Microsoft; on success take over organization, domains and mailboxes.

    Never raises for Microsoft's answers: a refusal is the result (ok=False
    with the error), stored on the connection like a success.
    """
    result = CheckResult(ok=False, tested_at=timezone.now().isoformat())
    try:
        graph = Graph(connection, session=session)
        roles = graph.roles()
        result.roles = sorted(roles)
        result.missing = missing_permissions(roles)
        if roles & NEEDS["organization"]:
            read_organization(graph, result)
        if roles & NEEDS["domains"]:
            result.verified_domains = verified_domain_names(graph)
        result.ok = True
    except GraphError as exc:
        result.error = exc.message
        log.info("m365 connection test of tenant %s failed: %s", connection.tenant_id, exc)
    if result.ok:
        take_over(connection, graph, result, actor=actor, ip=ip)
    store_result(connection, result)
    record(
        actor,
        "m365.test",
        ip,
        token,
        ok=result.ok,
        error=result.error,
        missing=[m["permission"] for m in result.missing],
    )
    return result


def read_organization(graph: Graph, result: CheckResult) -> None:
    organizations = graph.get("/organization").get("value") or []
    if not organizations:
        raise GraphError(200, "no_organization", "Microsoft Graph listed no organization for this directory")
    organization = organizations[0]
    result.organization = str(organization.get("displayName") or "")
    for domain in organization.get("verifiedDomains") or []:
        if domain.get("isInitial"):
            result.initial_domain = str(domain.get("name") or "").lower()


def verified_domain_names(graph: Graph) -> list[str]:
    """The directory's verified domains except the initial `*.onmicrosoft.com` one (Microsoft's, not the customer's)."""
    names = []
    for page in graph.pages("/domains"):
        for domain in page.get("value") or []:
            name = str(domain.get("id") or "").lower()
            if domain.get("isVerified") and name and not domain.get("isInitial"):
                names.append(name)
    return sorted(set(names))


def take_over(
    connection: Connection, graph: Graph, result: CheckResult, *, actor: Membership | None, ip: str | None
) -> None:
    """What a successful test makes true for the tenant: organization, verified domains, mailboxes."""
    tenant = connection.tenant
    if result.initial_domain and tenant.m365_organization != result.initial_domain:
        # X-OriginatorOrg carries the initial domain (contoso.onmicrosoft.com).
        actions.set_m365_organization(tenant, result.initial_domain, actor=actor, ip=ip)
    for name in result.verified_domains:
        try:
            actions.verify_domain_by_consent(tenant, name, proof="microsoft 365 admin consent", actor=actor, ip=ip)
        except ActionRefused as refused:
            result.domains_taken.append({"domain": name, "reason": str(refused)})
    if set(result.roles) & NEEDS["users"]:
        try:
            synced: SyncResult = sync_mailboxes(connection, graph, actor=actor, ip=ip)
        except GraphError as exc:
            result.error = f"the mailbox list could not be read: {exc.message}"
        else:
            result.mailboxes = synced.mailboxes


def store_result(connection: Connection, result: CheckResult) -> None:
    connection.last_test_at = timezone.now()
    connection.last_test_ok = result.ok
    connection.last_test_result = result.as_json()
    if result.organization:
        connection.organization_name = result.organization
    connection.save(
        update_fields=["last_test_at", "last_test_ok", "last_test_result", "organization_name", "updated_at"]
    )
