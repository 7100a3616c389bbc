"""The one way into the archive's tenant-owned rows: messages and the
deliveries (journal reports) that carried them, and a member's search scope.

Like `tenants.access`, these take the tenant or the member and answer 404
alike for "missing" and "belongs to another tenant"; a plain user sees only
the mail they sent or received (`tenants.access.mail_addresses`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from django.core.cache import cache
from django.db.models import Count, QuerySet
from django.http import Http404

from archive import items
from archive.models import Message, MessageSource
from ingest.models import Delivery
from ingest.stats import rejections_since
from search.backends.base import Scope
from tenants.access import addresses_for, mail_addresses
from tenants.models import Membership, Tenant


def messages(tenant: Tenant) -> QuerySet[Message]:
    """All archived messages of a tenant (for counts and maintenance, not for people)."""
    return Message.objects.filter(tenant=tenant)


def message_for(membership: Membership, message_id: int | str) -> Message:
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


def may_read(addresses: list[str] | None, message: Message) -> bool:
    """Whether a member scoped to `addresses` (None: all the tenant's mail) may read the message."""
    if addresses is None:
        return True
    return not set(addresses).isdisjoint(message.participants)


def archived_merge_keys(tenant: Tenant, keys: Sequence[str]) -> set[str]:
    """Which of these merge keys (`documents.message_id_key`) the tenant has archived already."""
    if not keys:
        return set()
    found = Message.objects.filter(tenant=tenant, merge_key__in=set(keys)).values_list("merge_key", flat=True)
    return set(found)


def search_scope(membership: Membership) -> Scope:
    """The one place a search gets its tenant filter and, for a plain user, their addresses.

    An empty address list (a user with no verified address) matches nothing.
    """
    return Scope(tenant_id=membership.tenant_id, addresses=mail_addresses(membership))


def deliveries(tenant: Tenant) -> QuerySet[Delivery]:
    return Delivery.objects.filter(tenant=tenant)


def delivery(tenant: Tenant, delivery_id: int) -> Delivery:
    try:
        return Delivery.objects.get(tenant=tenant, pk=delivery_id)
    except (Delivery.DoesNotExist, ValueError, TypeError):
        raise Http404("no such delivery") from None


def deliveries_of(message: Message) -> QuerySet[Delivery]:
    """The journal reports that carried this message (evidence); mailbox copies are its `sources_for`."""
    return Delivery.objects.filter(
        tenant_id=message.tenant_id, message=message, source=Delivery.Source.JOURNAL
    ).order_by("received_at", "id")


def sources_for(membership: Membership, message: Message) -> list[dict[str, object]]:
    """Where the message came from, for its page: each journal report (its
    queue id) and each mailbox holding a copy (mailbox, folder, deleted or
    not).  Admins and auditors see them all; a plain user only the copies
    in their own mailboxes, never the journal's queue ids nor where others filed it."""
    addresses = mail_addresses(membership)
    found: list[dict[str, object]] = []
    if addresses is None:
        found += [
            {"source": "journal", "queue_id": d.queue_id, "received_at": d.received_at}
            for d in deliveries_of(message).only("queue_id", "received_at")
        ]
    copies = MessageSource.objects.filter(tenant_id=message.tenant_id, message=message).order_by("mailbox", "folder")
    if addresses is not None:
        copies = copies.filter(mailbox__in=addresses)
    seen: set[tuple[str, str]] = set()
    for copy in copies:
        if (copy.mailbox, copy.graph_id) in seen:  # an item's later versions are one source
            continue
        seen.add((copy.mailbox, copy.graph_id))
        if copy.upload:  # only admins and auditors get here: an upload is in no one's mailbox
            found.append({"source": "upload", "file": copy.upload, "created_at": copy.created_at})
            continue
        found.append(
            {
                "source": "mailbox",
                "mailbox": copy.mailbox,
                "folder": copy.folder,
                "deleted_at": copy.deleted_at,
                "folder_history": copy.folder_history,
            }
        )
    return found


def source_labels(membership: Membership, messages: Sequence[Message]) -> dict[int, list[str]]:
    """Where each message came from, as short labels for an export's manifest
    ("journal <queue id>", "mailbox <address>/<folder>", "upload <file>"),
    showing this member what `sources_for` shows them; two queries for the batch."""
    addresses = mail_addresses(membership)
    ids = [m.pk for m in messages]
    labels: dict[int, list[str]] = {pk: [] for pk in ids}
    if addresses is None:
        journal = Delivery.objects.filter(
            tenant_id=membership.tenant_id, message_id__in=ids, source=Delivery.Source.JOURNAL
        ).order_by("received_at", "id")
        for message_id, queue_id in journal.values_list("message_id", "queue_id"):
            labels[message_id].append(f"journal {queue_id}")
    copies = MessageSource.objects.filter(tenant_id=membership.tenant_id, message_id__in=ids)
    if addresses is not None:
        copies = copies.filter(mailbox__in=addresses)
    rows = copies.order_by("mailbox", "folder", "id").values_list("message_id", "mailbox", "folder", "upload")
    for message_id, mailbox, folder, upload in rows:
        label = f"upload {upload}" if upload else f"mailbox {mailbox}/{folder}".rstrip("/")
        if message_id is not None and label not in labels[message_id]:
            labels[message_id].append(label)
    return labels


def folder_trees(membership: Membership) -> list[tuple[str, list[items.FolderNode]]]:
    """The folder tree of each of the member's own mailboxes (their addresses
    that hold archived mailbox items), for the tree beside their search
    results.  Only one's own: admins search every folder with `folder:`, but
    a tree is of the mailboxes one owns."""
    own = items.own_mailboxes(membership.tenant, addresses_for(membership))
    return [(mailbox, _cached_tree(membership.tenant, mailbox)) for mailbox in own]


# Counting a mailbox of 100,000 items by folder took 0.3-0.5 s on PostgreSQL
# (measured): too much for every search page, so a tree may be a minute old.
FOLDER_TREE_TTL = 60


def _cached_tree(tenant: Tenant, mailbox: str) -> list[items.FolderNode]:
    key = f"archive:folder-tree:{tenant.pk}:{hashlib.sha256(mailbox.encode()).hexdigest()[:32]}"
    tree = cache.get(key)
    if tree is None:
        tree = items.folder_tree(tenant, mailbox)
        cache.set(key, tree, FOLDER_TREE_TTL)
    found: list[items.FolderNode] = tree
    return found


def parse_failures(tenant: Tenant) -> QuerySet[Delivery]:
    return Delivery.objects.filter(tenant=tenant, status=Delivery.Status.PARSE_FAILED).order_by("-received_at")


def failed_deliveries(tenant: Tenant | None, statuses: Sequence[str]) -> QuerySet[Delivery]:
    """Reports that failed (parse or verification), of one tenant or all: for operators' commands."""
    found = Delivery.objects.select_related("tenant").filter(status__in=statuses)
    return (found.filter(tenant=tenant) if tenant is not None else found).order_by("received_at", "id")


def foreign_originators(tenant: Tenant) -> QuerySet[Delivery, str]:
    """Organizations (X-OriginatorOrg) of flagged reports, by name."""
    return (
        deliveries(tenant)
        .filter(originator_mismatch=True)
        .values_list("originator_org", flat=True)
        .order_by("originator_org")
        .distinct()
    )


def seen_originators(tenant: Tenant) -> list[str]:
    """The organizations (X-OriginatorOrg) of this tenant's journal reports,
    most reports first: what the organization check should expect."""
    rows = (
        deliveries(tenant)
        .exclude(originator_org="")
        .values("originator_org")
        .annotate(n=Count("id"))
        .order_by("-n", "originator_org")[:5]
    )
    return [row["originator_org"] for row in rows]


def rejections_by_reason(tenant: Tenant, since: datetime) -> dict[str, int]:
    """How many deliveries to this tenant the ingest refused since then, by reason."""
    return rejections_since(since, tenant)


def mailbox_places(tenant: Tenant, mailbox: str, kind: str = Message.Kind.MAIL) -> dict[str, tuple[str, bool]]:
    """Where the archive has each item of that kind of a tenant's mailbox:
    Graph id → (folder, deleted in the mailbox).  For the folder sync, which
    writes only what differs and sees deletions by what is no longer listed."""
    rows = MessageSource.objects.filter(tenant=tenant, mailbox=mailbox.lower(), kind=kind)
    return {
        graph_id: (folder, deleted_at is not None)
        for graph_id, folder, deleted_at in rows.values_list("graph_id", "folder", "deleted_at")
    }
