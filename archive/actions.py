"""State changes of the archive, as named functions (the only writers).

`archive_batch` turns verified journal reports into (merges into) their
Messages; `index_messages` puts Messages' current versions into the
search backend.  Both can run any number of times with the same result.
A Delivery's status changes are `ingest.delivery`'s.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError as UniqueViolation
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from archive import documents
from archive import items as mailbox_items
from archive.models import Message, MessageSource
from archive.parser import items as item_parser
from archive.parser import journal
from archive.parser.parsed import ParsedReport
from infra.filelock import file_lock
from infra.insert import insert_rows
from infra.storage import IntegrityError, StorageError, get_store, pack_key, raw_key, text_key
from infra.text import storable, storable_text
from ingest import delivery as ingest_delivery
from ingest import pack
from ingest.models import Delivery

if TYPE_CHECKING:
    from search.document import SearchDocument

log = logging.getLogger(__name__)

# Seconds an indexer waits for another's batch on the embedded default (SQLite).
INDEX_LOCK_TIMEOUT = 300.0

# Columns a later report may add to (the union); the rest is the first report's.
UNION_FIELDS = ("to", "cc", "bcc", "mailboxes")


class ParseFailed(Exception):
    """The parser raised on a report: a bug to fix, after which `retry_failed` runs it again."""


def parse_delivery(delivery: Delivery, raw: bytes | None = None) -> ParsedReport:
    """The stored report, read with its hash verified, then parsed.

    `raw` is the report's bytes when the caller has just read and verified
    them.  StorageError (retry later) passes through; anything the parser raises
    becomes ParseFailed (keep the report, record why).  The report's
    X-OriginatorOrg check is set on `delivery`; whatever records the outcome
    (merge, batch, parse failure) saves it with the rest.
    """
    if raw is None:
        raw = delivery.read_report()
    ingest_delivery.note_originator(delivery, raw)
    try:
        return journal.parse_report(raw)
    except Exception as exc:
        raise ParseFailed(f"{type(exc).__name__}: {exc}"[:2000]) from exc


def parse_item(source: MessageSource, raw: bytes) -> ParsedReport:
    """A mailbox item's stored bytes parsed by its kind: mail as the original
    itself (never unwrapped: a mailbox copy carries no journal envelope), an
    event's iCalendar, a contact's vCard.  What the parser raises becomes ParseFailed."""
    try:
        if source.kind == Message.Kind.EVENT:
            return item_parser.parse_event(raw)
        if source.kind == Message.Kind.CONTACT:
            return item_parser.parse_contact(raw)
        return journal.parse_report(raw, unwrap=False)
    except Exception as exc:
        raise ParseFailed(f"{type(exc).__name__}: {exc}"[:2000]) from exc


def _fields_or_mark_failed(
    delivery: Delivery, parsed: ParsedReport, source: MessageSource | None = None
) -> dict[str, Any] | None:
    """The Message columns of a parsed report (or mailbox item, with its
    `source`); None (recorded as a parse failure) when they cannot be built."""
    try:
        fields = documents.message_fields(parsed, delivery.received_at)
        if source is not None:
            fields = documents.item_fields(fields, parsed, source.kind, source.mailbox, source.received)
        return fields
    except Exception as exc:  # building the fields is parsing too
        ingest_delivery.mark_parse_failed(delivery, f"{type(exc).__name__}: {exc}"[:2000])
        return None


# An object of a batch up to this size goes into the batch's pack; a larger
# one (a message with big attachments) stays an object of its own.
PACK_LIMIT = 1024 * 1024


class _Object:
    """An object of a batch to store, and the Message fields (`<name>_key`,
    `_sha256`, `_offset`, `_size`) that say where it went."""

    __slots__ = ("bucket", "data", "fields", "name", "sha256")

    def __init__(self, bucket: str, name: str, data: bytes, fields: dict[str, Any], sha256: str | None = None):
        self.bucket, self.name, self.data, self.fields = bucket, name, data, fields
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()
        fields[f"{name}_sha256"] = self.sha256

    def place(self, key: str, offset: int | None = None) -> None:
        self.fields[f"{self.name}_key"] = key
        self.fields[f"{self.name}_offset"] = offset
        self.fields[f"{self.name}_size"] = None if offset is None else len(self.data)


def _objects_of(bucket: str, parsed: ParsedReport, fields: dict[str, Any], content: documents.Content) -> list[_Object]:
    """A parsed report's objects to store: its original, decrypted copy and
    extracted text (`content`); each fills its columns of `fields` once placed."""
    objects = [_Object(bucket, "original", parsed.original, fields, documents.original_sha256(parsed))]
    if parsed.decrypted:
        objects.append(_Object(bucket, "decrypted", parsed.decrypted, fields))
    else:
        fields.update(decrypted_sha256="", decrypted_key="", decrypted_offset=None, decrypted_size=None)
    objects.append(_Object(bucket, "text", documents.content_json(content), fields))
    return objects


def _store_objects(objects: list[_Object]) -> None:
    """Store a batch's objects with one `put_many`: those up to PACK_LIMIT in
    one pack per bucket (`ingest.pack`, each member named by its SHA-256),
    the larger ones content-addressed on their own.

    One object a message was two files a message on the folder store and two
    PUTs on S3: creating a file cost ~0.7 ms of system time on the reference
    box (an inode and a directory entry each), more than the rest of the
    worker's work on a message.  A pack is one file (one PUT) per batch; its
    members are read by range and checked against their own hashes."""
    items: list[tuple[str, str, bytes, str | None]] = []
    packs: dict[str, list[_Object]] = {}
    for obj in objects:
        if len(obj.data) > PACK_LIMIT:
            key = text_key(obj.sha256) if obj.name == "text" else raw_key(obj.sha256)
            items.append((obj.bucket, key, obj.data, obj.sha256))
            obj.place(key)
        else:
            packs.setdefault(obj.bucket, []).append(obj)
    for bucket, members in packs.items():
        built = pack.build((f"{n}", obj.sha256, obj.data) for n, obj in enumerate(members))
        key = pack_key(built.name)
        items.append((bucket, key, built.data, None))
        for obj, offset in zip(members, built.offsets, strict=True):
            obj.place(key, offset)
    get_store().put_many(items)


def _put_text(bucket: str, content: documents.Content) -> tuple[str, str]:
    """Store extracted text content-addressed (a no-op when it exists); returns (sha256, key)."""
    data = documents.content_json(content)
    sha = hashlib.sha256(data).hexdigest()
    get_store().put_many([(bucket, text_key(sha), data, sha)])
    return sha, text_key(sha)


def _merge_into(message: Message, fields: dict[str, Any], save: bool = True) -> None:
    """Add a report's recipients (a mailbox copy's mailbox); bump the version
    only if something changed.  A mailbox copy always counts as a change:
    its folder is searchable, so the message is indexed again."""
    changed = ["mailboxes"] if fields["mailboxes"] else []
    recipients = documents.union_recipients(message.envelope_recipients, fields["envelope_recipients"])
    if recipients != message.envelope_recipients:
        message.envelope_recipients = recipients
        changed.append("envelope_recipients")
    for name in UNION_FIELDS:
        merged = documents.union_list(getattr(message, name), fields[name])
        if merged != getattr(message, name):
            setattr(message, name, merged)
            changed.append(name)
    for name in ("decrypted", "text"):
        if not getattr(message, f"{name}_key") and fields[f"{name}_key"]:
            columns = [f"{name}_key", f"{name}_sha256", f"{name}_offset", f"{name}_size"]
            for column in columns:
                setattr(message, column, fields[column])
            changed += columns
            if name == "decrypted":  # the page now shows the decrypted copy's attachments
                message.attachment_list = fields["attachment_list"]
                changed.append("attachment_list")
    if changed:
        message.participants = documents.participants(message)
        if save:
            message.version += 1
            message.index_status = Message.IndexStatus.PENDING
            message.save(update_fields=[*set(changed), "participants", "version", "index_status"])


def remember_attachment_list(message: Message, readable: bytes) -> list[dict[str, Any]]:
    """The attachment list of a message archived before it was kept
    (`Message.attachment_list` None), worked out from its readable bytes and kept."""
    from archive.parser import mime

    found: list[dict[str, Any]] = storable(mime.attachment_list(readable))
    Message.objects.filter(pk=message.pk, attachment_list__isnull=True).update(attachment_list=found)
    message.attachment_list = found
    return found


class BatchConflict(Exception):
    """A batch met concurrent merges twice running: the caller goes one by one."""


# A report made ready to record: its delivery, parse, Message columns and content.
Prepared = tuple[Delivery, ParsedReport, dict[str, Any], documents.Content]


@dataclass
class Archived:
    """What `archive_batch` did: how many reports it archived, and the
    Messages it created with the content each was made from (`index_new`)."""

    count: int = 0
    created: list[tuple[Message, documents.Content]] = field(default_factory=list)
    merged: int = 0  # reports merged into Messages that existed before the batch


def archive_batch(
    items: list[tuple[Delivery, ParsedReport]], sources: dict[int, MessageSource] | None = None
) -> Archived:
    """Archive verified, parsed reports (one or many) into their Messages.
    Objects are stored in parallel, then every Message created or merged
    and every report linked in one transaction.
    `sources` has the MessageSource of each mailbox item among them, by
    delivery id (`archive.items.sources_of`): linked to the Message in the same transaction.

    A report already linked changes nothing.  When another worker created
    one of the messages since the batch read them (the unique (tenant,
    merge_key) constraint), the transaction runs once more and merges into
    theirs; a second conflict raises BatchConflict (nothing recorded).
    """
    prepared: list[Prepared] = []
    for delivery, parsed in items:
        fields = _fields_or_mark_failed(delivery, parsed, (sources or {}).get(delivery.pk))
        if fields is not None:
            prepared.append((delivery, parsed, fields, documents.content_of(parsed)))
    if not prepared:
        return Archived()
    # Every object of the batch in one group commit (a pack per bucket: one
    # file and two filesystem syncs on the folder store, one PUT on S3)
    # before the database records them.
    _store_objects(
        [
            obj
            for delivery, parsed, fields, content in prepared
            for obj in _objects_of(delivery.tenant.bucket, parsed, fields, content)
        ]
    )
    try:
        return _record_batch(prepared)
    except UniqueViolation:
        pass  # the other worker's message is committed now: this run merges into it
    try:
        return _record_batch(prepared)
    except UniqueViolation as exc:
        raise BatchConflict(str(exc)) from exc


def _record_batch(prepared: list[Prepared]) -> Archived:
    """Create or merge the batch's Messages and link its reports, in one transaction."""
    with transaction.atomic():
        return _create_or_merge(prepared)


def _create_or_merge(prepared: list[Prepared]) -> Archived:
    ids = [delivery.pk for delivery, _, _, _ in prepared]
    unlinked = set(
        Delivery.objects.select_for_update().filter(pk__in=ids, message__isnull=True).values_list("pk", flat=True)
    )
    keys = {(delivery.tenant_id, fields["merge_key"]) for delivery, _, fields, _ in prepared}
    existing = {
        (m.tenant_id, m.merge_key): m
        for m in Message.objects.select_for_update().filter(
            tenant_id__in={t for t, _ in keys}, merge_key__in={k for _, k in keys}
        )
        if (m.tenant_id, m.merge_key) in keys
    }
    new: dict[tuple[int, str], Message] = {}
    contents: dict[tuple[int, str], documents.Content] = {}
    links: list[tuple[Delivery, tuple[int, str]]] = []
    for delivery, _, fields, content in prepared:
        if delivery.pk not in unlinked:
            continue  # another run of this report linked it already
        key = (delivery.tenant_id, fields["merge_key"])
        if key in existing:
            _merge_into(existing[key], fields)
        elif key in new:
            _merge_into(new[key], fields, save=False)  # two reports of one message in this batch
        else:
            new[key] = Message(tenant=delivery.tenant, **fields)
            contents[key] = content  # what its text object holds
        links.append((delivery, key))
    _insert_messages(list(new.values()))
    messages = {**existing, **new}
    for delivery, key in links:
        delivery.message = messages[key]
    ingest_delivery.mark_archived([delivery for delivery, _ in links])
    _link_sources(
        [(messages[key].pk, delivery.pk) for delivery, key in links if delivery.source == Delivery.Source.MAILBOX]
    )
    merged = sum(1 for _, key in links if key in existing)
    return Archived(len(links), [(message, contents[key]) for key, message in new.items()], merged)


def _insert_messages(messages: list[Message]) -> None:
    """What `bulk_create` does for new Messages, without its per-field work
    (a fifth of the worker's archiving): `infra.insert`, each message's id
    matched back by its (tenant, merge_key), unique by constraint."""
    if not messages:
        return
    names = [column.attname for column in Message._meta.concrete_fields if not column.primary_key]
    by_key = {(message.tenant_id, message.merge_key): message for message in messages}
    rows = [{name: getattr(message, name) for name in names} for message in messages]
    for pk, tenant_id, merge_key in insert_rows(connection, Message, rows, returning=("tenant", "merge_key")):
        message = by_key[(tenant_id, merge_key)]
        message.pk = pk
        message._state.adding = False
        message._state.db = connection.alias


def _link_sources(links: list[tuple[int, int]]) -> None:
    """Point mailbox items' MessageSource rows at their Messages: (message id, delivery id)."""
    if links:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {MessageSource._meta.db_table} SET message_id = %s WHERE delivery_id = %s",  # noqa: S608
                links,
            )


def index_messages_of(deliveries: list[Delivery]) -> int:
    """Index the messages of these archived reports that are not indexed yet, here and now."""
    waiting = Message.objects.select_related("tenant").filter(pk__in={d.message_id for d in deliveries})
    return index_messages(list(waiting.exclude(index_status=Message.IndexStatus.INDEXED).order_by("pk")))


def index_new(created: list[tuple[Message, documents.Content]]) -> int:
    """Index Messages `archive_batch` just created, from what it had in memory:
    no row, text object or folder read back (a third of `index_pending`'s work
    a message).  Mailbox copies are left to `index_pending` (their folders are
    rows of their own).  A message merged by another worker since is still
    indexed at the version it had here and stays pending for its new one
    (`mark_indexed`; the backend never replaces a newer version with it).
    Returns how many were indexed; raises as `index_messages` does."""
    built = []
    for message, content in created:
        if message.mailboxes:
            continue
        try:
            built.append((message, documents.build_document(message, content, folders=[])))
        except Exception as exc:  # noqa: BLE001 - a bug on this message's values: this message alone
            _mark_index_failed(message, exc)
    return _index_and_mark(built)


def index_pending(limit: int = 500) -> int:
    """Index up to `limit` messages waiting to be indexed, of any tenant, in one batch;
    returns how many it took off the backlog (indexed, or marked failed).

    The batch is claimed with FOR UPDATE SKIP LOCKED, so workers draining
    at once take different messages, and a merge waits for the batch.
    Raises SearchUnavailable and StorageError (retry later).

    SQLite (the embedded default) has one write lock for the whole database,
    and its transactions take it at BEGIN: a batch claimed in a transaction
    held every commit of the ingest (every 250) for the whole indexing —
    reading the texts, the index's commit and its merges.  There the batch
    is read outside a transaction under a lock file that makes indexers
    take turns (the embedded index has one writer anyway), and
    `mark_indexed`'s version check keeps a message merged meanwhile pending.
    """
    pending = Message.objects.select_related("tenant").filter(index_status=Message.IndexStatus.PENDING)
    if connection.vendor == "sqlite":
        with file_lock(Path(settings.DATA_DIR) / "index-pending.lock", INDEX_LOCK_TIMEOUT):
            return _index_batch(list(pending.order_by("id")[:limit]))
    with transaction.atomic():
        claimed = pending.select_for_update(skip_locked=True, of=("self",))
        return _index_batch(list(claimed.order_by("id")[:limit]))


def _index_batch(batch: list[Message]) -> int:
    index_messages(batch)
    return len(batch)


def index_messages(messages: list[Message], reparse: bool = False) -> int:
    """Index these messages in one bulk request; returns how many went in.

    A message that cannot be indexed on its own account (stored objects
    missing or failing their hash check, a document the backend refuses) is
    marked failed (shown on System Status, retried by `reindex`) instead of
    blocking the others; a store or search backend that is down raises
    (StorageError, SearchUnavailable: retry later).  With `reparse`, the text
    is extracted again from the original and stored anew.
    """
    from search.backends.base import SearchUnavailable

    # Where the batch's mailbox copies are filed, in one query.
    folders = mailbox_items.folders_of([m.pk for m in messages if m.mailboxes])
    built = []
    for message in messages:
        try:
            built.append((message, _document(message, reparse, folders.get(message.pk, []))))
        except StorageError as exc:
            if not isinstance(exc, IntegrityError):
                get_store().ping()  # raises when the store itself is down: retry the batch later
            _mark_index_failed(message, exc)
        except (OperationalError, SearchUnavailable):
            raise  # our trouble: the whole batch is retried
        except Exception as exc:  # noqa: BLE001 - a broken text object or a bug: this message alone
            _mark_index_failed(message, exc)
    return _index_and_mark(built)


def _index_and_mark(built: list[tuple[Message, SearchDocument]]) -> int:
    """Index the built documents and mark their messages indexed at those versions; how many went in."""
    indexed = _index_built(built) if built else []
    mark_indexed([m for m, _ in indexed], [d.version for _, d in indexed])
    return len(indexed)


def _index_built(built: list[tuple[Message, SearchDocument]]) -> list[tuple[Message, SearchDocument]]:
    """Send the documents in one request; when the backend refuses it (not
    because it is down), one by one, so one bad document fails alone."""
    from search import get_backend
    from search.backends.base import SearchUnavailable

    try:
        get_backend().index([document for _, document in built])
        return built
    except SearchUnavailable:
        raise
    except Exception:  # noqa: BLE001 - which document, the backend's error does not always say
        log.warning("the search backend refused a batch of %d documents; indexing one by one", len(built))
    indexed = []
    for message, document in built:
        try:
            get_backend().index([document])
            indexed.append((message, document))
        except SearchUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - this document alone
            _mark_index_failed(message, exc)
    return indexed


def _mark_index_failed(message: Message, exc: Exception) -> None:
    log.error("message %s cannot be indexed: %s", message.pk, exc)
    Message.objects.filter(pk=message.pk).update(
        index_status=Message.IndexStatus.FAILED, index_error=storable_text(f"{exc}"[:2000])
    )


def _document(message: Message, reparse: bool, folders: list[str]) -> SearchDocument:
    if not reparse:
        return documents.build_document(message, folders=folders)
    content = documents.load_content(message)
    if message.attachment_list is None:  # archived before the list was kept: backfilled here
        remember_attachment_list(message, documents.read_readable(message))
    sha, key = _put_text(message.tenant.bucket, content)
    if (sha, key, message.text_offset, message.text_size) != (message.text_sha256, message.text_key, None, None):
        Message.objects.filter(pk=message.pk).update(text_sha256=sha, text_key=key, text_offset=None, text_size=None)
        message.text_sha256, message.text_key, message.text_offset, message.text_size = sha, key, None, None
    return documents.build_document(message, content, folders)


def mark_indexed(messages: list[Message], versions: list[int]) -> None:
    """Mark these messages indexed at the versions that went in: one UPDATE
    per distinct version (nearly always one), not one per message.  A message
    merged since (its version bumped) stays pending for the next batch."""
    now = timezone.now()
    by_version: dict[int, list[int]] = {}
    for message, version in zip(messages, versions, strict=True):
        by_version.setdefault(version, []).append(message.pk)
    for version, ids in by_version.items():
        for start in range(0, len(ids), 500):  # within every database's limit of bound parameters
            Message.objects.filter(pk__in=ids[start : start + 500], version=version).update(
                index_status=Message.IndexStatus.INDEXED, indexed_at=now, index_error=""
            )


def purge_messages(messages: list[Message]) -> set[str]:
    """Delete these messages of one tenant for good, with every report that
    carried them (Delivery) and every mailbox copy (MessageSource); returns
    the bucket keys that no remaining message or report refers to any more.

    Retention's deletion: `compliance.purge` calls it only in the
    transaction that locked these rows and found no legal hold on them.
    The objects themselves and the index entries are removed after commit.
    """
    if not messages:
        return set()
    tenant_id = messages[0].tenant_id
    if any(m.tenant_id != tenant_id for m in messages):
        raise ValueError("purge_messages takes the messages of one tenant")
    ids = [m.pk for m in messages]
    reports = list(Delivery.objects.filter(tenant_id=tenant_id, message_id__in=ids).values_list("pk", "storage_key"))
    keys = {key for m in messages for key in (m.original_key, m.decrypted_key, m.text_key) if key}
    keys.update(key for _, key in reports)
    report_ids = [pk for pk, _ in reports]
    MessageSource.objects.filter(tenant_id=tenant_id, delivery_id__in=report_ids).delete()
    MessageSource.objects.filter(tenant_id=tenant_id, message_id__in=ids).delete()
    Delivery.objects.filter(tenant_id=tenant_id, pk__in=report_ids).delete()
    Message.objects.filter(tenant_id=tenant_id, pk__in=ids).delete()
    return keys - referenced_keys(tenant_id, keys)


def referenced_keys(tenant_id: int, keys: set[str]) -> set[str]:
    """Which of these bucket keys a message or a report of the tenant still uses
    (objects are content-addressed, so several rows may share one; a pack holds many reports)."""
    found: set[str] = set()
    wanted = sorted(keys)
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        found.update(
            Delivery.objects.filter(tenant_id=tenant_id, storage_key__in=chunk).values_list("storage_key", flat=True)
        )
        for column in ("original_key", "decrypted_key", "text_key"):
            found.update(
                Message.objects.filter(tenant_id=tenant_id, **{f"{column}__in": chunk}).values_list(column, flat=True)
            )
    return found
