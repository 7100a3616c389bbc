"""The mailbox list from Microsoft 365, and members' aliases from their proxy addresses.

Graph's `/users` lists everyone in the directory; which of them have an
Exchange mailbox, and of what kind, comes from each user's
`mailboxSettings` (`userPurpose`, or 404 MailboxNotEnabledForRESTAPI for no
mailbox) when the app has MailboxSettings.Read.  Without it the proxy
addresses tell whether there is a mailbox and a disabled account marks a
shared one (Exchange disables the accounts of shared and resource mailboxes).

A member whose address is one of a mailbox's proxy addresses gets the
others as aliases ("who sees what"); the sync takes back the aliases it made
when the directory drops them, never those an admin added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from tenants import access as tenant_access
from tenants import actions
from tenants.actions import ActionRefused
from tenants.models import Membership

from .graph import Graph, GraphError
from .models import Connection, Mailbox, MailboxKind, SyncedAlias

log = logging.getLogger(__name__)

USER_FIELDS = "id,displayName,mail,userPrincipalName,proxyAddresses,accountEnabled,userType"
PURPOSES = {"user": MailboxKind.USER, "shared": MailboxKind.SHARED, "room": MailboxKind.ROOM}
PURPOSES |= {"equipment": MailboxKind.EQUIPMENT, "linked": MailboxKind.USER}
SETTINGS_THREADS = 8  # mailboxSettings requests at once (each to another mailbox; the tenant cap applies too)
SOURCE = "microsoft 365 proxy addresses"


@dataclass
class SyncResult:
    users: int = 0
    mailboxes: int = 0
    aliases_added: int = 0
    aliases_removed: int = 0
    conflicts: list[str] = field(default_factory=list)


@dataclass
class DirectoryUser:
    graph_id: str
    upn: str
    display_name: str
    addresses: list[str]  # lower-cased SMTP proxy addresses, primary first
    enabled: bool
    guest: bool
    kind: str = MailboxKind.USER
    has_mailbox: bool = True


def smtp_addresses(user: dict[str, Any]) -> list[str]:
    """The SMTP proxy addresses of a Graph user, lower-cased, the primary (`SMTP:`) first."""
    primary: list[str] = []
    others: list[str] = []
    for proxy in user.get("proxyAddresses") or []:
        scheme, _, address = str(proxy).partition(":")
        if scheme.lower() != "smtp" or "@" not in address:
            continue
        (primary if scheme == "SMTP" else others).append(address.strip().lower())
    mail = str(user.get("mail") or "").strip().lower()
    if not primary and mail:
        primary.append(mail)
    return list(dict.fromkeys(primary + others))


def read_users(graph: Graph) -> list[DirectoryUser]:
    users = []
    for page in graph.pages("/users", {"$select": USER_FIELDS, "$top": "999"}):
        for item in page.get("value") or []:
            addresses = smtp_addresses(item)
            users.append(
                DirectoryUser(
                    graph_id=str(item["id"]),
                    upn=str(item.get("userPrincipalName") or "").lower(),
                    display_name=str(item.get("displayName") or ""),
                    addresses=addresses,
                    enabled=bool(item.get("accountEnabled", True)),
                    guest=str(item.get("userType") or "Member") == "Guest",
                    has_mailbox=bool(addresses) and str(item.get("userType") or "Member") != "Guest",
                )
            )
    return users


def classify(graph: Graph, users: list[DirectoryUser], roles: set[str]) -> None:
    """Set each user's kind and whether they have a mailbox (see the module docstring)."""
    candidates = [u for u in users if u.has_mailbox]
    for user in candidates:
        user.kind = MailboxKind.USER if user.enabled else MailboxKind.SHARED
    if not roles & {"MailboxSettings.Read", "MailboxSettings.ReadWrite"}:
        return

    def purpose(user: DirectoryUser) -> None:
        try:
            settings = graph.get(f"/users/{user.graph_id}/mailboxSettings", {"$select": "userPurpose"})
        except GraphError as exc:
            if exc.status == 404:
                user.has_mailbox = False
            elif exc.status != 403:
                raise
            return
        user.kind = PURPOSES.get(str(settings.get("userPurpose") or ""), MailboxKind.OTHER)

    with ThreadPoolExecutor(SETTINGS_THREADS, thread_name_prefix="m365-mailbox") as pool:
        list(pool.map(purpose, candidates))  # re-raises a request's unexpected error here


def sync_mailboxes(
    connection: Connection, graph: Graph | None = None, *, actor: Membership | None = None, ip: str | None = None
) -> SyncResult:
    """Read the directory's users into Mailbox rows and members' aliases; what changed."""
    graph = graph or Graph(connection)
    users = read_users(graph)
    classify(graph, users, graph.roles())
    tenant = connection.tenant
    now = timezone.now()
    result = SyncResult(users=len(users), mailboxes=sum(1 for u in users if u.has_mailbox))
    with transaction.atomic():
        rows = store_mailboxes(connection, users, now)
        aliases(connection, rows, result, actor=actor, ip=ip)
        connection.mailboxes_synced_at = now
        connection.save(update_fields=["mailboxes_synced_at", "updated_at"])
    log.info("m365 mailboxes of tenant %s: %s users, %s mailboxes", tenant.pk, result.users, result.mailboxes)
    return result


def store_mailboxes(connection: Connection, users: Iterable[DirectoryUser], now: Any) -> list[Mailbox]:
    """Upsert a Mailbox per directory user; those no longer listed keep their row, marked without a mailbox."""
    tenant = connection.tenant
    existing = {m.graph_id: m for m in Mailbox.objects.select_for_update().filter(tenant=tenant)}
    seen = []
    for user in users:
        row = existing.pop(user.graph_id, None) or Mailbox(tenant=tenant, graph_id=user.graph_id)
        row.user_principal_name = user.upn
        row.display_name = user.display_name
        row.primary_address = user.addresses[0] if user.addresses else ""
        row.proxy_addresses = user.addresses
        row.kind = user.kind
        row.has_mailbox = user.has_mailbox
        row.last_seen = now
        row.save()
        seen.append(row)
    for gone in existing.values():
        if gone.has_mailbox:
            gone.has_mailbox = False
            gone.save(update_fields=["has_mailbox"])
    return seen


def wanted_aliases(tenant_members: list[Membership], mailboxes: list[Mailbox]) -> dict[str, tuple[Membership, Mailbox]]:
    """address → (member, mailbox) for every proxy address a member should have as an alias."""
    by_email = {m.user.email.lower(): m for m in tenant_members}
    wanted: dict[str, tuple[Membership, Mailbox]] = {}
    for mailbox in mailboxes:
        if not mailbox.has_mailbox:
            continue
        owners = [by_email[a] for a in mailbox.proxy_addresses if a in by_email]
        if len(owners) != 1:
            continue  # nobody's, or several members' at once: no one gets the others' mail
        member = owners[0]
        for address in mailbox.proxy_addresses:
            if address not in by_email:
                wanted.setdefault(address, (member, mailbox))
    return wanted


def aliases(
    connection: Connection, mailboxes: list[Mailbox], result: SyncResult, *, actor: Membership | None, ip: str | None
) -> None:
    tenant = connection.tenant
    members = list(tenant_access.members(tenant))
    wanted = wanted_aliases(members, mailboxes)
    synced = SyncedAlias.objects.filter(alias__tenant=tenant).select_related("alias", "alias__membership__user")
    for row in synced:
        want = wanted.get(row.alias.address)
        if want is None or want[0].pk != row.alias.membership_id:
            actions.remove_directory_alias(row.alias, source=SOURCE, actor=actor, ip=ip)
            result.aliases_removed += 1
    present = {a.address: a for a in tenant_access.aliases(tenant)}
    for address, (member, mailbox) in sorted(wanted.items()):
        alias = present.get(address)
        if alias is not None:
            if alias.membership_id != member.pk:
                result.conflicts.append(f"{address} is an alias of another member already")
            continue
        try:
            alias = actions.add_directory_alias(member, address, source=SOURCE, actor=actor, ip=ip)
        except ActionRefused as refused:
            result.conflicts.append(str(refused))
            continue
        SyncedAlias.objects.create(alias=alias, mailbox=mailbox)
        result.aliases_added += 1
