"""Import of uploaded mail: an mbox, a ZIP of `.eml` files or an Outlook
`.pst`, message by message through the journal's durable path
(`archive.items.store_items`, recorded as from "upload <file name>"), then
archived and indexed by the worker like any other item.

    started = start_import(membership, request.FILES["file"])   # UploadRefused: 4xx with its message
    run_import(started.pk)                                       # the task; progress on the row

Each message is stored as it is (its SHA-256 names it: uploading the same
file again stores nothing new) and merged by Message-ID with copies already
archived (journal or mailbox: one Message, every source listed); those are
counted as `already_archived`.  A message that cannot be read (no header, a
damaged ZIP entry, over the size limit) is listed with why, and the others
are imported.  Memory stays bounded: the upload is read a line or an entry
at a time and stored in batches of at most BATCH_ITEMS or BATCH_BYTES.

A `.pst` is converted by `readpst` (Debian's pst-utils, libpst) into one
mbox per folder in the spool, then read like an uploaded mbox; without
readpst on the worker's PATH a PST upload is refused with 415 and why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import Message as MimeMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F
from django.http import Http404
from django.utils import timezone

from archive import access as archive_access
from archive import documents
from archive.items import Item, store_items
from compliance.models_export import Import
from tenants.access import membership_in
from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership

log = logging.getLogger(__name__)

BATCH_ITEMS = 200
BATCH_BYTES = 16 * 1024 * 1024
MAX_LISTED_ERRORS = 1000
MAX_FILE_NAME = 255
RUN_TASK = "compliance.tasks.run_import"
# mbox lines are read at most this long at a time: a binary "line" of gigabytes stays bounded.
_LINE_LIMIT = 1 << 16
_MBOXRD_QUOTED = re.compile(rb">+From ")
_PST_MAGIC = b"!BDN"
PST_UNAVAILABLE = (
    "PST import is not available on this server: readpst (Debian's pst-utils) is not installed. "
    "Install it, or convert the .pst to mbox (`readpst -r`) and upload that."
)
# readpst's own limit: a PST it has not converted in this long is taken as stuck.
PST_TIMEOUT = 6 * 3600


class UploadRefused(ValueError):
    """An upload that cannot be imported; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- access --------------------------------------------------------------------------


def import_for(membership: Membership, public_id: object) -> Import:
    """The import if this member may see it (owners and admins, who alone
    import); 404 alike for missing and another tenant's."""
    try:
        wanted = uuid.UUID(str(public_id))
        found = Import.objects.get(tenant_id=membership.tenant_id, public_id=wanted)
    except (Import.DoesNotExist, ValueError):
        raise Http404("no such import") from None
    if not membership.is_admin:
        raise Http404("no such import")
    return found


def imports_of(membership: Membership) -> list[Import]:
    """The tenant's imports, newest first (owners and admins only: the caller checks)."""
    return list(Import.objects.filter(tenant_id=membership.tenant_id).order_by("-created_at")[:100])


# --- starting --------------------------------------------------------------------------


def start_import(
    membership: Membership, upload: UploadedFile[Any], *, ip: str | None = None, token: ApiToken | None = None
) -> Import:
    """Keep the upload in the spool and have it imported in the background
    (audited); UploadRefused when it is no mbox or ZIP (or a PST)."""
    name = Path(upload.name or "upload").name[:MAX_FILE_NAME] or "upload"
    spool = _spool_dir() / f"{uuid.uuid4()}.upload"
    _keep(upload, spool)
    try:
        import_format = detect_format(name, spool)
    except UploadRefused:
        spool.unlink(missing_ok=True)
        raise
    with transaction.atomic():
        started = Import.objects.create(
            tenant_id=membership.tenant_id,
            created_by_id=membership.user_id,
            file_name=name,
            format=import_format,
            size=spool.stat().st_size,
            spool_path=str(spool),
        )
        record_event(
            membership,
            AuditEvent.Action.IMPORT_STARTED,
            {"import": str(started.public_id), "file": name, "format": import_format, "size": started.size},
            ip=ip,
            token=token,
            target=f"import {started.public_id}",
        )
        transaction.on_commit(lambda: publish_run(started.pk))
    return started


def publish_run(import_id: int) -> None:
    from ingest.delivery import publish

    try:
        publish(RUN_TASK, (import_id,))
    except Exception:
        log.warning("could not publish import %s; the next tending will", import_id, exc_info=True)


def _spool_dir() -> Path:
    folder = Path(settings.ARCHIVA_SPOOL_DIR) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _keep(upload: UploadedFile[Any], target: Path) -> None:
    """The upload's bytes at `target`: a large one (already a temporary file on
    disk, FILE_UPLOAD_TEMP_DIR) moved there, a small one written out."""
    temporary = getattr(upload, "temporary_file_path", None)
    if temporary is not None:
        try:
            os.link(temporary(), target)  # same filesystem: no copy of gigabytes
            return
        except OSError:
            pass
        shutil.copyfile(temporary(), target)
        return
    with target.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)


def detect_format(name: str, path: Path) -> str:
    """mbox or eml-zip, by the file's first bytes (and its name for a PST)."""
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(_PST_MAGIC) or name.lower().endswith(".pst"):
        if not head.startswith(_PST_MAGIC):
            raise UploadRefused(f"{name}: not an Outlook .pst file (it does not begin with !BDN)")
        if readpst() is None:
            raise UploadRefused(PST_UNAVAILABLE, 415)
        return Import.Format.PST
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        if not zipfile.is_zipfile(path):
            raise UploadRefused(f"{name}: not a readable ZIP file (its central directory is missing or damaged)")
        return Import.Format.EML_ZIP
    if head.lstrip(b"\r\n").startswith(b"From "):
        return Import.Format.MBOX
    if not head:
        raise UploadRefused(f"{name}: the file is empty")
    raise UploadRefused(
        f"{name}: not an mbox (it must begin with a 'From ' line), a ZIP of .eml files or an Outlook .pst"
    )


# --- running ---------------------------------------------------------------------------


@dataclass
class Found:
    """One message read from the upload, or why it could not be."""

    label: str  # "message 3 (byte 4711)" or the ZIP entry's name
    data: bytes | None
    error: str = ""


# A run that has not stored a batch for this long died (a worker killed mid-way): start again.
STALE_AFTER = timedelta(hours=1)


def run_import(import_id: int) -> str:
    """Import the upload; its final state.  Safe to run twice: only a pending
    import (or one whose runner died) is claimed, and a message stored before
    is not stored again."""
    started = _claim(import_id)
    if started is None:
        return "not claimed"
    try:
        membership = membership_in(started.created_by, started.tenant) if started.created_by else None
    except Http404:
        membership = None
    if membership is None:
        _finish(started, None, "its creator is no longer a member of the organization")
        return Import.State.FAILED
    path = Path(started.spool_path)
    try:
        with tempfile.TemporaryDirectory(dir=_spool_dir()) as work:
            _import_all(started, _reader(started.format, path, Path(work)))
    except Exception as exc:
        log.exception("import %s failed", started.public_id)
        reason = f"{type(exc).__name__}: {exc}. Import the file again: what was stored is not stored twice."
        _finish(started, membership, reason[:2000])
        return Import.State.FAILED
    _finish(started, membership, "")
    return Import.State.DONE


def _reader(import_format: str, path: Path, work: Path) -> Iterator[Found | _Progress]:
    if import_format == Import.Format.MBOX:
        return mbox_messages(path)
    if import_format == Import.Format.PST:
        return pst_messages(path, work)
    return zip_messages(path)


def _claim(import_id: int) -> Import | None:
    now = timezone.now()
    claimable = Import.objects.filter(pk=import_id, state=Import.State.PENDING) | Import.objects.filter(
        pk=import_id, state=Import.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER
    )
    reset = {"done": 0, "stored": 0, "already_archived": 0, "error_count": 0, "errors": [], "position": 0}
    if not claimable.update(state=Import.State.RUNNING, heartbeat_at=now, **reset):
        return None
    return Import.objects.select_related("tenant", "created_by").get(pk=import_id)


class _Progress:
    """What the reader is at, for the row: `position` of `extent`."""

    position = 0
    extent = 0


def _import_all(started: Import, reader: Iterator[Found | _Progress]) -> None:
    batch: list[tuple[Found, bytes]] = []
    batch_bytes = 0
    progress = _Progress()
    errors: list[Found] = []
    for found in reader:
        if isinstance(found, _Progress):
            progress = found
            continue
        problem = found.error or problem_of(found.data or b"")
        if problem or found.data is None:
            errors.append(Found(found.label, None, problem))
        else:
            batch.append((found, found.data))
            batch_bytes += len(found.data)
        # Errors count towards a batch too: a file of nothing but errors is listed as it goes.
        if len(batch) + len(errors) >= BATCH_ITEMS or batch_bytes >= BATCH_BYTES:
            _store_batch(started, batch, errors, progress)
            batch, batch_bytes, errors = [], 0, []
    _store_batch(started, batch, errors, progress)


def _store_batch(started: Import, batch: list[tuple[Found, bytes]], errors: list[Found], progress: _Progress) -> None:
    """Store a batch durably (`store_items`), then count it on the row."""
    already = 0
    if batch:
        keys = [documents.message_id_key(message_id_of(data)) for _, data in batch]
        known = archive_access.archived_merge_keys(started.tenant, [k for k in keys if k])
        already = sum(1 for key in keys if key in known)
        items = [Item("mail", "", "", f"upload:{_sha256(data)}", data, upload=started.file_name) for _, data in batch]
        store_items(started.tenant, items)
    listed = [{"item": e.label, "error": e.error} for e in errors]
    with transaction.atomic():
        row = Import.objects.select_for_update().only("errors").get(pk=started.pk)
        room = max(0, MAX_LISTED_ERRORS - len(row.errors))
        Import.objects.filter(pk=started.pk).update(
            done=F("done") + len(batch) + len(errors),
            stored=F("stored") + len(batch) - already,
            already_archived=F("already_archived") + already,
            error_count=F("error_count") + len(errors),
            errors=row.errors + listed[:room],
            position=progress.position,
            extent=progress.extent,
            heartbeat_at=timezone.now(),
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _finish(started: Import, membership: Membership | None, reason: str) -> None:
    state = Import.State.FAILED if reason else Import.State.DONE
    Path(started.spool_path).unlink(missing_ok=True)
    with transaction.atomic():
        Import.objects.filter(pk=started.pk).update(
            state=state, error=reason, finished_at=timezone.now(), spool_path=""
        )
        if membership is None:
            return
        done = Import.objects.get(pk=started.pk)
        record_event(
            membership,
            AuditEvent.Action.IMPORT_FINISHED,
            {
                "import": str(done.public_id),
                "file": done.file_name,
                "state": state,
                "stored": done.stored,
                "already_archived": done.already_archived,
                "errors": done.error_count,
                **({"error": reason} if reason else {}),
            },
            target=f"import {done.public_id}",
        )


# --- reading messages --------------------------------------------------------------------


_PARSER = BytesHeaderParser(policy=compat32)


def _headers(data: bytes) -> MimeMessage:
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0), default=min(len(data), 1 << 20))
    return _PARSER.parsebytes(data[: end + 2])


def problem_of(data: bytes) -> str:
    """Why these bytes are no message to import; "" when they are one."""
    if not data.strip():
        return "empty message"
    headers = _headers(data)
    if not any(headers.get(name) for name in ("From", "Message-ID", "Date")):
        return "not an email message: no From, Date or Message-ID header"
    return ""


def message_id_of(data: bytes) -> str | None:
    value = _headers(data).get("Message-ID")
    return str(value) if value else None


def max_message_size() -> int:
    return int(settings.ARCHIVA_SMTP_MAX_SIZE)


def mbox_messages(path: Path) -> Iterator[Found | _Progress]:
    """The messages of an mbox (mboxo or mboxrd: one ">" is taken off a quoted
    "From " line), read a line at a time; a progress mark after each message."""
    limit = max_message_size()
    progress = _Progress()
    progress.extent = path.stat().st_size
    number = 0
    current: bytearray | None = None
    too_big = False
    start = 0
    at_line_start = True
    with path.open("rb") as mbox:
        while True:
            offset = mbox.tell()
            line = mbox.readline(_LINE_LIMIT)
            if not line:
                break
            line_start, at_line_start = at_line_start, line.endswith(b"\n")
            if line_start and line.startswith(b"From "):
                if current is not None:
                    yield _mbox_found(number, start, current, too_big, limit)
                    progress.position = offset
                    yield progress
                number, start, current, too_big = number + 1, offset, bytearray(), False
                continue
            if current is None or too_big:
                continue  # before the first "From " line, or the rest of a message over the limit
            current += line[1:] if line_start and _MBOXRD_QUOTED.match(line) else line
            if len(current) > limit:
                too_big, current = True, bytearray()
    if current is not None:
        yield _mbox_found(number, start, current, too_big, limit)
    progress.position = progress.extent
    yield progress


def _mbox_found(number: int, start: int, data: bytearray, too_big: bool, limit: int) -> Found:
    label = f"message {number} (at byte {start})"
    if too_big:
        return Found(label, None, f"larger than the {limit // (1024 * 1024)} MB limit")
    # The blank line before the next "From " separates messages; it is not the message's.
    if data.endswith(b"\n\r\n"):
        del data[-2:]
    elif data.endswith(b"\n\n"):
        del data[-1:]
    return Found(label, bytes(data))


def readpst() -> str | None:
    return shutil.which("readpst")


def pst_messages(path: Path, work: Path) -> Iterator[Found | _Progress]:
    """The messages of an Outlook .pst: readpst writes one mbox per folder
    (`-r`: the folder tree as directories) into `work`, read one after the
    other; each message's label names its folder."""
    program = readpst()
    if program is None:
        raise RuntimeError(PST_UNAVAILABLE)
    out = work / "pst"
    out.mkdir()
    # -q quiet, -r a directory per folder with an "mbox" file, -j 0: no forked workers (memory bounded).
    done = subprocess.run(  # noqa: S603 - a fixed program and our own paths, no shell
        [program, "-q", "-r", "-j", "0", "-o", str(out), str(path)],
        capture_output=True,
        timeout=PST_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-500:]
        raise RuntimeError(f"readpst could not read the .pst (exit {done.returncode}): {reason or 'no reason given'}")
    boxes = sorted(p for p in out.rglob("*") if p.is_file() and p.stat().st_size)
    progress = _Progress()
    progress.extent = sum(box.stat().st_size for box in boxes)
    read = 0
    for box in boxes:
        folder = box.parent.relative_to(out).as_posix()
        for found in mbox_messages(box):
            if isinstance(found, _Progress):
                progress.position = read + found.position
                yield progress
            else:
                yield Found(f"{folder}: {found.label}", found.data, found.error)
        read += box.stat().st_size
        box.unlink()  # the spool holds one converted folder less from here on


_SKIPPED = ("__MACOSX/",)


def zip_messages(path: Path) -> Iterator[Found | _Progress]:
    """The `.eml` entries of a ZIP, one at a time; any other file, and an
    entry that cannot be read, is listed as an error."""
    limit = max_message_size()
    progress = _Progress()
    with zipfile.ZipFile(path) as archive:
        entries = [e for e in archive.infolist() if not e.is_dir() and not e.filename.startswith(_SKIPPED)]
        progress.extent = len(entries)
        for number, entry in enumerate(entries, 1):
            yield _zip_found(archive, entry, limit)
            progress.position = number
            yield progress


def _zip_found(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limit: int) -> Found:
    name = entry.filename
    if not name.lower().endswith(".eml"):
        return Found(name, None, "not an .eml file")
    if entry.file_size > limit:
        return Found(name, None, f"larger than the {limit // (1024 * 1024)} MB limit")
    try:
        with archive.open(entry) as member:
            data = member.read(limit + 1)  # the header's size may lie: read no more than the limit
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
        return Found(name, None, f"cannot be read from the ZIP: {exc}")
    if len(data) > limit:
        return Found(name, None, f"larger than the {limit // (1024 * 1024)} MB limit")
    return Found(name, data)


def requeue_stranded(older_than: timedelta) -> int:
    """Publish again imports still pending after `older_than` (a broker that
    was down), or whose runner died; how many."""
    now = timezone.now()
    pending = Import.objects.filter(state=Import.State.PENDING, created_at__lt=now - older_than)
    died = Import.objects.filter(state=Import.State.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    ids = list((pending | died).values_list("pk", flat=True))
    for import_id in ids:
        publish_run(import_id)
    return len(ids)
