"""eDiscovery export: every message a query finds that its requester may
read, as a ZIP of the original `.eml` files or as one mbox, with
`manifest.csv` (id, file, SHA-256, date, from, to, subject, sources), whose
own SHA-256 is shown on the page and written to the audit log.

    export = create_export(membership, "from:hr@contoso.com", "eml-zip")   # audited, task published
    build_export(export.pk)                                                  # the task: streams the file
    export_for(membership, public_id)                                        # creator or admins, else 404
    expire_exports()                                                         # beat: gone after 7 days

Memory stays flat whatever the count: the ids found go to a spool file,
messages are read back in chunks through the access layer (who-sees-what is
checked again for every chunk), each written to the ZIP as it is read, the
ZIP's central directory spilled to disk (`SpilledZipFile`) and the manifest
written to a file of its own.  The finished file goes to the exports area,
a bucket of the region that no tenant owns and that is not versioned, so an
expired export is really deleted (a tenant's bucket may be versioned and
object-locked); keys start with the tenant's public id.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import pickle
import re
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from archive import access as archive_access
from archive import documents, visibility
from archive.models import Message
from compliance.models_export import Export
from infra.storage import StorageError, get_store
from search.query import QueryError, parse
from tenants.access import mail_addresses, membership_in
from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership

log = logging.getLogger(__name__)

KEEP_FOR = timedelta(days=7)
# Messages read back per query: bounds the memory an export holds at once.
CHUNK = 200
MANIFEST_COLUMNS = ["id", "file", "sha256", "date", "from", "to", "subject", "sources", "error"]
BUILD_TASK = "compliance.tasks.build_export"
_HASH_CHUNK = 1 << 20


class ExportError(ValueError):
    """A request for an export that cannot be made (bad format or query)."""


# --- the exports area ----------------------------------------------------------------


def exports_bucket() -> str:
    """The region's bucket for export files (tenant buckets end in a public id)."""
    prefix = settings.ARCHIVA_S3_BUCKET_PREFIX if settings.ARCHIVA_STORAGE == "s3" else ""
    return f"{prefix}exports"


_ready: set[str] = set()
_ready_lock = threading.Lock()


def _ensure_bucket() -> str:
    bucket = exports_bucket()
    with _ready_lock:
        if bucket not in _ready:
            # Not versioned: an expired export must really go.
            get_store().create_bucket(bucket, versioned=False)
            _ready.add(bucket)
    return bucket


# --- access --------------------------------------------------------------------------


def export_for(membership: Membership, public_id: object) -> Export:
    """The export if this member may see and download it: its creator, or the
    tenant's owners and admins.  404 alike for missing, another tenant's, and
    someone else's (an auditor or plain user does not learn it exists)."""
    try:
        wanted = uuid.UUID(str(public_id))
        export = Export.objects.select_related("created_by").get(tenant_id=membership.tenant_id, public_id=wanted)
    except (Export.DoesNotExist, ValueError):
        raise Http404("no such export") from None
    if export.created_by_id != membership.user_id and not membership.is_admin:
        raise Http404("no such export")
    return export


def exports_of(membership: Membership) -> list[Export]:
    """The exports this member may see, newest first: their own; for admins every one of the tenant's."""
    found = Export.objects.select_related("created_by").filter(tenant_id=membership.tenant_id)
    if not membership.is_admin:
        found = found.filter(created_by_id=membership.user_id)
    return list(found.order_by("-created_at")[:100])


def downloadable(export: Export) -> bool:
    return export.state == Export.State.DONE and export.expires_at > timezone.now()


# --- creating ------------------------------------------------------------------------


# A selection is for the messages a person ticked, not for bulk: bulk is a query.
MAX_SELECTION = 10_000


def create_export(
    membership: Membership,
    query: str,
    export_format: str,
    *,
    selection: list[int] | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> Export:
    """Record an export of what `query` finds for this member (or of the
    `selection` of message ids among those they may read) and have it built
    in the background (audited); ExportError for a bad format, query or selection."""
    if export_format not in Export.Format.values:
        raise ExportError(f"format must be one of {', '.join(Export.Format.values)}, not {export_format!r:.40}")
    if selection is not None:
        selection, query = checked_selection(selection), ""
    if not isinstance(query, str) or len(query) > 2000:
        raise ExportError("q must be a search query of at most 2000 characters")
    try:
        parse(query)
    except QueryError as exc:
        raise ExportError(f"q: {exc}") from exc
    with transaction.atomic():
        export = Export.objects.create(
            tenant_id=membership.tenant_id,
            created_by_id=membership.user_id,
            query=query,
            selection=selection,
            format=export_format,
            expires_at=timezone.now() + KEEP_FOR,
        )
        what = {"query": query} if selection is None else {"selection": len(selection)}
        record_event(
            membership,
            AuditEvent.Action.EXPORT_CREATED,
            {"export": str(export.public_id), **what, "format": export_format},
            ip=ip,
            token=token,
            target=f"export {export.public_id}",
        )
        transaction.on_commit(lambda: publish_build(export.pk))
    return export


def checked_selection(selection: object) -> list[int]:
    if (
        not isinstance(selection, list)
        or not 1 <= len(selection) <= MAX_SELECTION
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in selection)
    ):
        raise ExportError(f"ids must be a list of 1 to {MAX_SELECTION} message ids")
    return list(dict.fromkeys(selection))


def publish_build(export_id: int) -> None:
    """Publish the build; on broker trouble `tend_exports` publishes it again later."""
    from ingest.delivery import publish

    try:
        publish(BUILD_TASK, (export_id,))
    except Exception:
        log.warning("could not publish export %s; the next tending will", export_id, exc_info=True)


# --- building ------------------------------------------------------------------------


def build_export(export_id: int) -> str:
    """Build the export's file and store it; its final state.  Safe to run
    twice: only a pending export (or one whose builder died) is claimed."""
    export = _claim(export_id)
    if export is None:
        return "not claimed"
    try:
        membership = membership_in(export.created_by, export.tenant) if export.created_by else None
    except Http404:
        membership = None
    if membership is None:
        _fail(export, "its creator is no longer a member of the organization")
        return Export.State.FAILED
    spool = Path(settings.ARCHIVA_SPOOL_DIR) / "exports"
    spool.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=spool) as folder:
            _build(export, membership, Path(folder))
    except Exception as exc:
        log.exception("export %s failed", export.public_id)
        _fail(export, f"{type(exc).__name__}: {exc}"[:2000])
        return Export.State.FAILED
    return Export.State.DONE


# A builder that has not written a chunk for this long died (a worker killed mid-way): start again.
STALE_AFTER = timedelta(hours=1)


def _claim(export_id: int) -> Export | None:
    now = timezone.now()
    stale = now - STALE_AFTER
    claimable = Export.objects.filter(pk=export_id, expires_at__gt=now).filter(
        state=Export.State.PENDING
    ) | Export.objects.filter(pk=export_id, state=Export.State.RUNNING, heartbeat_at__lt=stale)
    if not claimable.update(state=Export.State.RUNNING, started_at=now, heartbeat_at=now, done=0, error=""):
        return None
    return Export.objects.select_related("tenant", "created_by").get(pk=export_id)


def _fail(export: Export, reason: str) -> None:
    Export.objects.filter(pk=export.pk).update(state=Export.State.FAILED, error=reason, finished_at=timezone.now())


def _build(export: Export, membership: Membership, folder: Path) -> None:
    from search import get_backend

    if export.selection is not None:
        found: Iterator[int] = iter(export.selection)  # each checked against the member's view per chunk
    else:
        found = get_backend().scan(archive_access.search_scope(membership), export.query)
    ids_path, total = _spool_ids(found, folder)
    Export.objects.filter(pk=export.pk).update(total=total)
    file_path = folder / "export.zip"
    manifest_path = folder / "manifest.csv"
    with SpilledZipFile(file_path, folder / "central-directory") as archive, manifest_path.open("w", newline="") as m:
        manifest = csv.writer(m)
        manifest.writerow(MANIFEST_COLUMNS)
        writer = _EmlWriter(archive) if export.format == Export.Format.EML_ZIP else _MboxWriter(archive)
        try:
            done = 0
            for chunk in _chunks(ids_path):
                _write_chunk(writer, manifest, membership, chunk)
                done += len(chunk)
                Export.objects.filter(pk=export.pk).update(done=done, heartbeat_at=timezone.now())
        finally:
            writer.close()  # before the ZIP closes, which refuses while an entry is open
        m.flush()
        manifest_sha256 = _file_sha256(manifest_path)
        archive.write(manifest_path, "manifest.csv")
    _store(export, membership, file_path, manifest_sha256)


def _spool_ids(found: Iterator[int], folder: Path) -> tuple[Path, int]:
    """The ids a scan found, one per line in a file, and how many."""
    path = folder / "ids"
    total = 0
    with path.open("w") as out:
        for message_id in found:
            out.write(f"{message_id}\n")
            total += 1
    return path, total


def _chunks(ids_path: Path) -> Iterator[list[int]]:
    chunk: list[int] = []
    with ids_path.open() as lines:
        for line in lines:
            chunk.append(int(line))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _write_chunk(writer: _Writer, manifest: Any, membership: Membership, ids: list[int]) -> None:
    """The chunk's messages this member may still read, in the scan's order;
    one that left the archive or their view since the search is skipped."""
    addresses = mail_addresses(membership)
    messages = archive_access.messages_for(membership, ids)
    sources = archive_access.source_labels(membership, messages)
    for message in messages:
        message.tenant = membership.tenant  # the same (messages_for filters by it): no query per message
        row = _manifest_row(message, addresses, sources.get(message.pk, []))
        try:
            data = exported_bytes(message, addresses)
        except StorageError as exc:  # an integrity failure is a StorageError too
            # Named in the manifest rather than left out silently: the recipient sees what is missing.
            row["error"] = f"unreadable: {exc}"[:500]
        else:
            row["file"] = writer.add(message, data)
            row["sha256"] = hashlib.sha256(data).hexdigest()
        manifest.writerow([row[column] for column in MANIFEST_COLUMNS])


def _manifest_row(message: Message, addresses: list[str] | None, sources: list[str]) -> dict[str, str]:
    return {
        "id": str(message.pk),
        "file": "",
        "sha256": "",
        "date": message.date.isoformat(),
        "from": message.from_display,
        "to": "; ".join(visibility.visible_recipients(message, addresses)),
        "subject": message.subject,
        "sources": "; ".join(sources),
        "error": "",
    }


_BCC_LINE = re.compile(rb"^bcc[ \t]*:", re.IGNORECASE)


def exported_bytes(message: Message, addresses: list[str] | None) -> bytes:
    """The original as archived (hash-checked); for a plain user who did not
    send it, without its Bcc header, which they may not see (README, who sees
    what).  The manifest's SHA-256 is of these bytes."""
    data = documents.read_original(message)
    if addresses is None or not message.bcc or visibility.sent_by(message, addresses):
        return data
    return without_bcc(data)


def without_bcc(data: bytes) -> bytes:
    """The message with its header's Bcc fields (and their continuation lines) removed."""
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0), default=len(data))
    kept: list[bytes] = []
    skipping = False
    for line in data[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = bool(_BCC_LINE.match(line))
        if not skipping:
            kept.append(line)
    return b"".join(kept) + data[end:]


class _Writer:
    def add(self, message: Message, data: bytes) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _EmlWriter(_Writer):
    """One `messages/<id>.eml` entry per message."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive

    def add(self, message: Message, data: bytes) -> str:
        name = f"messages/{message.pk}.{_SUFFIX.get(message.kind, 'eml')}"
        with self.archive.open(_entry(name), "w", force_zip64=True) as entry:
            entry.write(data)
        return name


_SUFFIX: dict[str, str] = {Message.Kind.MAIL: "eml", Message.Kind.EVENT: "ics", Message.Kind.CONTACT: "vcf"}
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class _MboxWriter(_Writer):
    """One `messages.mbox` entry (mboxrd: a line starting with any number of
    ">" then "From " gets one more ">"; take one off to get the bytes the
    manifest hashes)."""

    NAME = "messages.mbox"

    def __init__(self, archive: zipfile.ZipFile):
        self.entry: IO[bytes] = archive.open(_entry(self.NAME), "w", force_zip64=True)

    def add(self, message: Message, data: bytes) -> str:
        sender = (message.from_addresses or [message.envelope_sender or "MAILER-DAEMON"])[0] or "MAILER-DAEMON"
        stamp = message.date.astimezone(UTC).strftime("%a %b %d %H:%M:%S %Y")
        self.entry.write(f"From {sender.replace(' ', '')} {stamp}\n".encode())
        self.entry.write(_FROM_LINE.sub(rb">\1", data))
        self.entry.write(b"\n" if data.endswith(b"\n") else b"\n\n")
        return self.NAME

    def close(self) -> None:
        self.entry.close()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=timezone.now().timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _store(export: Export, membership: Membership, path: Path, manifest_sha256: str) -> None:
    sha256, size = _file_sha256(path), path.stat().st_size
    key = f"{export.tenant.public_id.hex}/{export.public_id}.zip"
    get_store().put_file(_ensure_bucket(), key, path, sha256, consume=True)
    with transaction.atomic():
        Export.objects.filter(pk=export.pk).update(
            state=Export.State.DONE,
            storage_key=key,
            sha256=sha256,
            size=size,
            manifest_sha256=manifest_sha256,
            finished_at=timezone.now(),
        )
        record_event(
            membership,
            AuditEvent.Action.EXPORT_FINISHED,
            {"export": str(export.public_id), "manifest_sha256": manifest_sha256, "sha256": sha256, "size": size},
            target=f"export {export.public_id}",
        )


# --- the ZIP's central directory on disk ----------------------------------------------


class _SpilledEntries:
    """ZipFile's list of entries, kept in a file: each entry's record (some
    hundred bytes) would otherwise stay in memory until the ZIP is closed,
    40 MB at 100,000 messages.  ZipFile only appends, counts and iterates it."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.file = path.open("w+b")

    def append(self, info: zipfile.ZipInfo) -> None:
        self.file.seek(0, 2)
        pickle.dump(info, self.file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[zipfile.ZipInfo]:
        self.file.flush()
        with self.path.open("rb") as records:
            for _ in range(self.count):
                yield pickle.load(records)  # noqa: S301 - our own file, written above

    def close(self) -> None:
        self.file.close()


class _NoNames(dict[str, zipfile.ZipInfo]):
    """ZipFile's name index, not kept: our entry names are unique by construction."""

    def __setitem__(self, key: str, value: zipfile.ZipInfo) -> None:
        pass


class SpilledZipFile(zipfile.ZipFile):
    """A ZipFile for writing whose central directory waits on disk, not in memory."""

    def __init__(self, path: Path, records: Path):
        super().__init__(path, "w", allowZip64=True)
        self._spilled = _SpilledEntries(records)
        self.filelist = self._spilled  # type: ignore[assignment]  # append/len/iter is all ZipFile uses when writing
        self.NameToInfo = _NoNames()

    def close(self) -> None:
        if self.fp is None:  # closed already (ZipFile.__del__ closes again)
            return
        try:
            super().close()
        finally:
            self._spilled.close()


# --- downloading and expiry -------------------------------------------------------------


def download_chunks(export: Export) -> Iterator[bytes]:
    """The export's file from the exports area, in chunks."""
    return get_store().iter_bytes(exports_bucket(), export.storage_key)


def record_download(
    membership: Membership, export: Export, *, ip: str | None = None, token: ApiToken | None = None
) -> None:
    record_event(
        membership,
        AuditEvent.Action.EXPORT_DOWNLOADED,
        {"export": str(export.public_id), "manifest_sha256": export.manifest_sha256, "sha256": export.sha256},
        ip=ip,
        token=token,
        target=f"export {export.public_id}",
    )


def expire_exports() -> int:
    """Delete the files of exports past their 7 days; how many expired.
    The rows stay (state `expired`), as the audit log refers to them."""
    now = timezone.now()
    expired = 0
    for export in Export.objects.filter(expires_at__lte=now).exclude(state=Export.State.EXPIRED):
        if export.storage_key:
            try:
                get_store().delete(exports_bucket(), export.storage_key)
            except StorageError:
                log.warning("could not delete export %s; the next run tries again", export.public_id, exc_info=True)
                continue
        Export.objects.filter(pk=export.pk).update(state=Export.State.EXPIRED, storage_key="")
        expired += 1
    return expired


def requeue_stranded(older_than: timedelta) -> int:
    """Publish again the builds of exports still pending after `older_than`
    (a broker that was down), or whose builder died; how many."""
    now = timezone.now()
    pending = Export.objects.filter(state=Export.State.PENDING, created_at__lt=now - older_than, expires_at__gt=now)
    died = Export.objects.filter(state=Export.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER, expires_at__gt=now)
    ids = list((pending | died).values_list("pk", flat=True))
    for export_id in ids:
        publish_build(export_id)
    return len(ids)
