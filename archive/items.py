"""Mailbox items (Microsoft 365 mail, events, contacts) into the archive: the
archive side of the Graph import and folder sync (issue 18).

`store_items` is the journal ingest's durable path for items fetched from a
mailbox: their bytes go into the tenant's bucket as the committer stores
journal reports (a pack per batch, a spool file linked in as an object of its
own), then one Delivery row each (`source` mailbox) and one MessageSource row
(mailbox, folder, Graph id) in one transaction, with one flush, and only then
does it return.  The same task as for journal reports
(`archive.tasks.process_deliveries`) archives and indexes them: a mail item's
MIME is the original itself and merges by Message-ID with its journal copies
(one Message, every source kept); events and contacts become items of their
own kind.  The Graph side (m365) calls these functions and nothing else:

    ids = store_items(tenant, [Item("mail", "anna@contoso.com", "Inbox/Projects", graph_id, mime), ...])
    skip = stored_graph_ids(tenant, "anna@contoso.com", page_of_ids)   # resume: fetch only the rest
    record_folder_change(tenant, mailbox, graph_id, "Archive/2026")    # False: unknown, fetch and store it
    record_deletion(tenant, mailbox, graph_id)                         # recorded, never deleted
    folder_tree(tenant, mailbox)                                       # [FolderNode(name, path, count, …)]

Call `store_items` outside a transaction, with pages of up to a few hundred
items (one pack, one transaction, one flush each), large items (over
256 KB, as the SMTP ingest spools them) as spool files.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.utils import timezone

from archive.models import Message, MessageSource
from infra.storage import sync_filesystems
from ingest import record
from ingest.delivery import enqueue, publish_indexing
from ingest.directory import Route
from ingest.models import Delivery
from tenants.models import Tenant

log = logging.getLogger(__name__)

Kind = Literal["mail", "event", "contact"]
KINDS: tuple[str, ...] = ("mail", "event", "contact")
# The columns' sizes (archive.models.MessageSource).
MAX_MAILBOX = 320
MAX_FOLDER = 1000
MAX_GRAPH_ID = 512
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20

# (mailbox, graph id, sha256): what makes a stored item the same item (`store_items`).
ItemKey = tuple[str, str, str]


class StoreFailed(Exception):
    """Some items could not be stored or recorded (storage or database trouble);
    the rest were.  Storing the same items again is safe (idempotent)."""


@dataclass
class Item:
    """One item of one mailbox, as Graph gave it.

    `content`: MIME for mail (`…/messages/{id}/$value`), iCalendar for an
    event, vCard for a contact; bytes, or a spool file (a Path) for a large
    item, which `store_items` consumes (links into the bucket or removes).
    `sha256` may be given (e.g. hashed while spooling); it is checked.
    """

    kind: Kind
    mailbox: str  # the mailbox's primary SMTP address
    folder: str  # "Inbox/Projects"; "" (or "Calendar", "Contacts") for events and contacts
    graph_id: str  # the item's (immutable) id in that mailbox
    content: bytes | Path
    sha256: str | None = None
    received: datetime | None = None  # when the mailbox received it (Graph's receivedDateTime)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"item kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        self.mailbox = normalize_mailbox(self.mailbox)
        if not isinstance(self.graph_id, str) or not self.graph_id or len(self.graph_id) > MAX_GRAPH_ID:
            raise ValueError(f"an item's graph_id must be 1 to {MAX_GRAPH_ID} characters, got {self.graph_id!r:.80}")
        self.folder = normalize_folder(self.folder)
        if isinstance(self.content, bytearray | memoryview):
            self.content = bytes(self.content)
        if not isinstance(self.content, bytes | Path):
            raise TypeError(f"an item's content is bytes or a Path, not {type(self.content).__name__}")
        if self.received is not None and self.received.tzinfo is None:
            raise ValueError("an item's received time must be timezone-aware")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"an item's sha256 must be 64 lower-case hex digits, got {self.sha256!r:.80}")

    def checked_sha256(self) -> str:
        """The SHA-256 of the content, worked out (a file in chunks: memory stays
        bounded) and compared with the one given: a wrong hash would name the
        object wrongly and fail the worker's check for good."""
        if isinstance(self.content, bytes):
            found = hashlib.sha256(self.content).hexdigest()
        else:
            digest = hashlib.sha256()
            with self.content.open("rb") as spool:
                while chunk := spool.read(_HASH_CHUNK):
                    digest.update(chunk)
            found = digest.hexdigest()
        if self.sha256 is not None and self.sha256 != found:
            raise ValueError(f"item {self.graph_id:.40}: sha256 given {self.sha256}, content hashes to {found}")
        self.sha256 = found
        return found

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.stat().st_size


@dataclass
class FolderNode:
    """A folder of a mailbox's tree: `count` items in it, `total` with its subfolders."""

    name: str
    path: str
    count: int = 0
    children: list[FolderNode] = field(default_factory=list)
    total: int = 0


def normalize_mailbox(mailbox: str) -> str:
    if not isinstance(mailbox, str):
        raise TypeError(f"a mailbox is its primary SMTP address (str), not {type(mailbox).__name__}")
    address = mailbox.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > MAX_MAILBOX or any(c.isspace() for c in address):
        raise ValueError(f"a mailbox is its primary SMTP address, got {mailbox!r:.80}")
    return address


def normalize_folder(folder: str) -> str:
    """A folder path as stored, "Inbox/Projects": levels joined by "/", none empty, no slash at either end."""
    if not isinstance(folder, str):
        raise TypeError(f"a folder path is a str, not {type(folder).__name__}")
    path = "/".join(level.strip() for level in folder.split("/") if level.strip())
    if len(path) > MAX_FOLDER or "\x00" in path:
        raise ValueError(f"a folder path is at most {MAX_FOLDER} characters without NUL, got {folder!r:.80}")
    return path


# --- storing ---------------------------------------------------------------------


def store_items(tenant: Tenant, items: list[Item]) -> list[str]:
    """Store and record mailbox items; their queue ids, in the order given.

    Durable when it returns: the bytes in the tenant's bucket and the rows
    committed (and flushed, where a commit is not durable by itself), as
    the ingest does before `250`.  Then published to the worker, best
    effort (the sweep finds what the broker missed).  Idempotent per
    (tenant, mailbox, graph_id, sha256): an item stored before (a resumed
    import) stores nothing and gets its first queue id; a changed item (new
    bytes) is a new version.  Every Path given is consumed.  Call it
    outside a transaction: inside one, "durable" waits for the caller's
    commit (and so does publishing).  Raises
    StoreFailed when some could not be stored or recorded (the others
    were), ValueError/TypeError for a malformed item (nothing stored).
    """
    try:
        keys = [(item.mailbox, item.graph_id, item.checked_sha256()) for item in items]
        queue_ids = _known(tenant, keys)
        fresh: dict[ItemKey, tuple[Item, record.Job]] = {}
        for item, key in zip(items, keys, strict=True):
            if key not in queue_ids and key not in fresh:
                fresh[key] = (item, _job(tenant, item, key[2]))
        if fresh:
            queue_ids.update(_commit(tenant, fresh))
    finally:
        _consume(items)
    missing = [key for key in keys if key not in queue_ids]
    if missing:
        raise StoreFailed(f"{len(missing)} of {len(items)} items could not be stored; store them again")
    return [queue_ids[key] for key in keys]


def stored_graph_ids(tenant: Tenant, mailbox: str, graph_ids: Iterable[str]) -> set[str]:
    """Which of these item ids of the mailbox are archived already (any
    version): a resumed import skips fetching their content again."""
    wanted = {graph_id for graph_id in graph_ids if graph_id}
    if not wanted:
        return set()
    found = MessageSource.objects.filter(tenant=tenant, mailbox=normalize_mailbox(mailbox), graph_id__in=wanted)
    return set(found.values_list("graph_id", flat=True).distinct())


def _job(tenant: Tenant, item: Item, sha256: str) -> record.Job:
    """The committer's job for one item: its tenant as the only route, no envelope."""
    envelope = record.Envelope(mail_from="", peer_ip=None, helo="", tls_version="", tls_cipher="")
    # No SMTP recipient: the mailbox's address is on the MessageSource row.
    envelope.routes[tenant.pk] = (Route(tenant.pk, tenant.bucket, tenant.region, None), [])
    return record.Job(0, envelope, item.content, sha256, item.size)


def _consume(items: Iterable[Item]) -> None:
    """Remove the spool files left (a duplicate's, or all when we failed early)."""
    for item in items:
        if isinstance(item.content, Path):
            item.content.unlink(missing_ok=True)


def _known(tenant: Tenant, keys: list[ItemKey]) -> dict[ItemKey, str]:
    """The queue ids of items already stored, by key."""
    if not keys:
        return {}
    wanted = set(keys)
    found = MessageSource.objects.filter(
        tenant=tenant, mailbox__in={k[0] for k in keys}, graph_id__in={k[1] for k in keys}
    ).values_list("mailbox", "graph_id", "sha256", "delivery__queue_id")
    return {(m, g, s): q for m, g, s, q in found if (m, g, s) in wanted}


def _commit(tenant: Tenant, fresh: dict[ItemKey, tuple[Item, record.Job]]) -> dict[ItemKey, str]:
    """Store, flush and record (the committer's order, `record.commit_batch`),
    then publish; the queue ids of the items recorded."""
    jobs = [job for _, job in fresh.values()]
    stored, failed = record.store_jobs(jobs)
    if failed:
        log.error("could not store %d of %d mailbox items: %s", len(failed), len(jobs), failed[0][1])
    stored_ids = {id(job) for job in stored}
    pending = {key: pair for key, pair in fresh.items() if id(pair[1]) in stored_ids}
    if not pending:
        return {}
    flush = record.flush_paths()
    after = record.flush_after_commit()
    if not after:
        sync_filesystems(flush)  # PostgreSQL: objects durable before the rows that point at them
    recorded, delivery_ids = _record(tenant, pending)
    if after:
        sync_filesystems(flush)  # SQLite: one flush covers the objects and the WAL
    # After the commit: inside a caller's transaction a worker could not see the rows yet.
    transaction.on_commit(lambda: enqueue(delivery_ids), using=record.delivery_connection().alias)
    return recorded


def _record(tenant: Tenant, pending: dict[ItemKey, tuple[Item, record.Job]]) -> tuple[dict[ItemKey, str], list[int]]:
    """The items' Delivery and MessageSource rows in one transaction; their
    queue ids and the new Delivery ids.  When another store of one of these
    items committed first (the unique constraint), they go one by one and
    the ones now known take the queue id already recorded."""
    try:
        return _insert(tenant, pending)
    except IntegrityError:
        log.info("mailbox items of tenant %s were stored concurrently; recording one by one", tenant.pk)
    queue_ids: dict[ItemKey, str] = {}
    delivery_ids: list[int] = []
    for key, pair in pending.items():
        known = _known(tenant, [key])
        if known:
            queue_ids.update(known)
            continue
        try:
            ids, new = _insert(tenant, {key: pair})
        except IntegrityError:
            queue_ids.update(_known(tenant, [key]))
            continue
        queue_ids.update(ids)
        delivery_ids += new
    return queue_ids, delivery_ids


def _insert(tenant: Tenant, pending: dict[ItemKey, tuple[Item, record.Job]]) -> tuple[dict[ItemKey, str], list[int]]:
    now = timezone.now()
    rows: list[record.Row] = []
    for _, job in pending.values():
        for row in record.delivery_values(job.envelope, job.queue_id, job.sha256, job.size, job.placement, now):
            rows.append({**row, "source": Delivery.Source.MAILBOX.value})
    with transaction.atomic(using=record.delivery_connection().alias):
        ids = record.insert_deliveries(rows)
        # RETURNING gives the ids in no promised order: map them by queue id.
        by_queue_id = dict(Delivery.objects.filter(pk__in=ids).values_list("queue_id", "pk"))
        MessageSource.objects.bulk_create(
            MessageSource(
                tenant=tenant,
                delivery_id=by_queue_id[job.queue_id],
                kind=item.kind,
                mailbox=item.mailbox,
                folder=item.folder,
                graph_id=item.graph_id,
                sha256=job.sha256,
                received=item.received,
                created_at=now,
            )
            for item, job in pending.values()
        )
    return {key: job.queue_id for key, (_, job) in pending.items()}, ids


# --- folder moves and deletions ----------------------------------------------------


def record_folder_change(tenant: Tenant, mailbox: str, graph_id: str, folder: str) -> bool:
    """The item moved to `folder` in that mailbox: its path changes (the old one
    kept in `folder_history`) and its message is indexed again.  An item seen
    deleted that turns up in a folder again (restored) is no longer deleted.
    False when no such item of that mailbox is archived (fetch and store it)."""
    mailbox, folder = normalize_mailbox(mailbox), normalize_folder(folder)
    now = timezone.now()
    with transaction.atomic():
        sources = list(
            MessageSource.objects.select_for_update().filter(tenant=tenant, mailbox=mailbox, graph_id=graph_id)
        )
        changed = [s for s in sources if s.folder != folder or s.deleted_at is not None]
        for source in changed:
            if source.folder != folder:
                source.folder_history = [*source.folder_history, {"folder": source.folder, "until": now.isoformat()}]
            source.folder, source.deleted_at = folder, None
        MessageSource.objects.bulk_update(changed, ["folder", "folder_history", "deleted_at"])
        _index_again(s.message_id for s in changed)
    return bool(sources)


def record_deletion(tenant: Tenant, mailbox: str, graph_id: str) -> bool:
    """The item was deleted from that mailbox: noted (`deleted_at`), nothing is
    deleted from the archive; it leaves the mailbox's folder tree and folder
    search.  False when no such item of that mailbox is archived."""
    mailbox = normalize_mailbox(mailbox)
    with transaction.atomic():
        sources = list(
            MessageSource.objects.select_for_update().filter(tenant=tenant, mailbox=mailbox, graph_id=graph_id)
        )
        changed = [s for s in sources if s.deleted_at is None]
        MessageSource.objects.filter(pk__in=[s.pk for s in changed]).update(deleted_at=timezone.now())
        _index_again(s.message_id for s in changed)
    return bool(sources)


def _index_again(message_ids: Iterable[int | None]) -> None:
    """Queue these messages for indexing (their folders changed) once the transaction commits."""
    ids = {pk for pk in message_ids if pk is not None}
    if not ids:
        return
    Message.objects.filter(pk__in=ids).update(version=F("version") + 1, index_status=Message.IndexStatus.PENDING)
    transaction.on_commit(publish_indexing)


# --- the folder tree -------------------------------------------------------------


def folder_tree(tenant: Tenant, mailbox: str) -> list[FolderNode]:
    """The mailbox's mail folders as a tree, by name, with how many archived
    items each holds now (deleted ones left out).  For the tree beside a
    user's search results: callers check that the mailbox is the user's
    (`archive.access.folder_trees`)."""
    counts = dict(
        MessageSource.objects.filter(
            tenant=tenant, mailbox=normalize_mailbox(mailbox), kind=Message.Kind.MAIL, deleted_at__isnull=True
        )
        .values_list("folder")
        .annotate(items=Count("graph_id", distinct=True))
        .values_list("folder", "items")
    )
    return build_tree(counts)


def own_mailboxes(tenant: Tenant, addresses: Iterable[str]) -> list[str]:
    """Which of these addresses are mailboxes with archived items, in order."""
    wanted = sorted({a.strip().lower() for a in addresses if a})
    found = set(
        MessageSource.objects.filter(tenant=tenant, mailbox__in=wanted).values_list("mailbox", flat=True).distinct()
    )
    return [a for a in wanted if a in found]


def build_tree(counts: dict[str, int]) -> list[FolderNode]:
    """Folder nodes from {path: count}; a parent with no items of its own is there with 0."""
    root = FolderNode(name="", path="")
    nodes: dict[str, FolderNode] = {"": root}
    for path in sorted(p for p in counts if p):
        parent = root
        levels = path.split("/")
        for depth in range(1, len(levels) + 1):
            sub = "/".join(levels[:depth])
            if sub not in nodes:
                nodes[sub] = FolderNode(name=levels[depth - 1], path=sub)
                parent.children.append(nodes[sub])
            parent = nodes[sub]
        parent.count = counts[path]
    _sort_and_total(root)
    return root.children


def _sort_and_total(node: FolderNode) -> int:
    node.children.sort(key=lambda child: (child.name.casefold(), child.name))
    node.total = node.count + sum(_sort_and_total(child) for child in node.children)
    return node.total


# --- for the worker and the search index --------------------------------------------


def sources_of(deliveries: Iterable[Delivery]) -> dict[int, MessageSource]:
    """The MessageSource of each mailbox item among these deliveries, by delivery id (one query)."""
    ids = [d.pk for d in deliveries if d.source == Delivery.Source.MAILBOX]
    if not ids:
        return {}
    return {source.delivery_id: source for source in MessageSource.objects.filter(delivery_id__in=ids)}


# --- what the search index holds ----------------------------------------------------


def folders_of(message_ids: list[int]) -> dict[int, list[str]]:
    """Where each message is filed now, as "mailbox/folder path" (lower-cased),
    one per mailbox copy not deleted from its mailbox; one query for a batch.
    The search index holds these (`search.document.SearchDocument.folders`)."""
    found: dict[int, list[str]] = {}
    rows = (
        MessageSource.objects.filter(message_id__in=message_ids, deleted_at__isnull=True)
        .exclude(folder="")
        .values_list("message_id", "mailbox", "folder")
        .order_by("message_id", "mailbox", "folder")
    )
    for message_id, mailbox, folder in rows:
        value = f"{mailbox}/{folder}".lower()
        if value not in found.setdefault(message_id, []):
            found[message_id].append(value)
    return found
