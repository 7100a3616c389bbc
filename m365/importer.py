"""The historical import engine: mailboxes → folders → pages → items → the archive.

One Celery task runs one import (`m365.tasks.run_import`) for a time slice:
it claims the run (a conditional UPDATE on its heartbeat, so two workers
never run it at once), then imports up to ARCHIVA_M365_IMPORT_MAILBOXES
mailboxes at a time in threads, each with up to 4 downloads at once
(Exchange allows 4 concurrent requests per mailbox; `m365.graph.Graph`
enforces it as well).  Threads inside one task rather than a task per
mailbox: the per-tenant cap is then a plain thread pool, and one heartbeat
covers the whole run; a crashed worker's run is taken over as a whole.

Per folder, `messages/delta` pages are fetched, each message's MIME
downloaded by `$value` into a `Spool`, and every ARCHIVA_M365_IMPORT_BATCH
items handed to `archive.items.store_items`, which is durable on return.
Only then is the link to the next page saved: a crash fetches at most one
batch again, and store_items' idempotence absorbs the repeats.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from requests.adapters import HTTPAdapter

from archive.items import Item, store_items, stored_graph_ids
from m365 import calendar_items
from m365.graph import Graph, GraphError
from m365.importing import ImportDay, ImportMailbox, ImportRun, ImportSource
from m365.spool import Spool, spool_dir

log = logging.getLogger(__name__)

PER_MAILBOX = 4  # Exchange Online's limit of concurrent requests per mailbox
HEARTBEAT = 5.0  # seconds between two signs of life of a running import
TIME_BUDGET = 240.0  # seconds per task (Celery's soft limit is 300): then a fresh task goes on
ORPHAN_AGE = 3600.0  # seconds after which a spool file of ours is a killed worker's leftover
MESSAGE_FIELDS = "id,receivedDateTime"
PAGE_SIZE = 100  # items per Graph page (the Prefer: odata.maxpagesize header)
THROTTLED = {429, 503, 504}
UNREACHABLE = {"unreachable", "interrupted"}  # GraphError codes of a connection that failed (status 0)
MAX_THROTTLED = 5  # slices a mailbox may end throttled (or cut off) before it counts as failed
# Graph's answer for an item deleted between its listing and its download.
GONE = {"ErrorItemNotFound", "ItemNotFound", "ResourceNotFound"}


class Stopped(Exception):
    """The run was paused, taken over, or its time slice is over: stop after the current batch."""


@dataclass
class Context:
    """What every mailbox thread of one run shares."""

    run: ImportRun
    graph: Graph
    owner: str
    deadline: float
    kinds: set[str]
    since: datetime | None
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.stop.is_set() or time.monotonic() > self.deadline:
            self.stop.set()
            raise Stopped


# --- claiming and running ----------------------------------------------------


def claim(run_id: int, owner: str) -> ImportRun | None:
    """Take the run for `owner` if nobody alive has it; None otherwise (paused, finished, or running elsewhere)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.ARCHIVA_M365_IMPORT_STALE)
    taken = (
        ImportRun.objects.filter(pk=run_id, state__in=[ImportRun.State.QUEUED, ImportRun.State.RUNNING])
        .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale))
        .update(
            state=ImportRun.State.RUNNING,
            owner=owner,
            heartbeat_at=now,
            slice_started_at=now,
            started_at=Coalesce("started_at", now),
        )
    )
    return ImportRun.objects.select_related("tenant").get(pk=run_id) if taken else None


def run_slice(run_id: int, budget: float = TIME_BUDGET, graph: Graph | None = None) -> bool | None:
    """Import for at most `budget` seconds: True when the run is finished,
    False when there is more to do, None when the run was not ours to run."""
    owner = uuid.uuid4().hex
    run = claim(run_id, owner)
    if run is None:
        return None
    remove_orphans(spool_dir())
    started = time.monotonic()
    beat = _Heartbeat(run.pk, owner)
    try:
        try:
            graph = graph or _graph_for(run)
            ctx = Context(run, graph, owner, started + budget, _kinds(graph), _since(run))
        except GraphError as exc:
            if transient(exc):
                log.warning("import %s: %s; trying again in the next slice", run.pk, exc)
                return _finish_or_release(run, owner)
            _fail(run, owner, str(exc))
            return True
        except LookupError as exc:
            _fail(run, owner, str(exc))
            return True
        beat.ctx = ctx
        beat.start()
        try:
            _import_mailboxes(ctx)
        except BaseException:
            ctx.stop.set()  # Ctrl-C in `manage.py m365_import`: the mailbox threads stop after their batch
            raise
        return _finish_or_release(run, owner)
    finally:
        beat.stop()


def remove_orphans(directory: Path, older_than: float = ORPHAN_AGE) -> int:
    """Spool files a killed worker left behind: a download is stored within seconds, so one this old is nobody's."""
    removed = 0
    limit = time.time() - older_than
    for path in directory.glob("m365-*.eml"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
        except OSError:
            continue  # taken over or removed by another worker meanwhile
    return removed


def _graph_for(run: ImportRun) -> Graph:
    from m365.models import Connection

    connection = Connection.objects.filter(tenant=run.tenant).first()
    if connection is None:
        raise LookupError("Microsoft 365 is not connected: set up the connection first")
    graph = Graph(connection)
    # Pages of PAGE_SIZE (Graph's default for messages is 10: ten times the round trips), and a
    # connection pool as large as the requests that may run at once (beyond it, each request
    # would pay for a new TLS handshake).
    # Events' times in UTC too (else each in its own Windows time zone name, which calendars outside
    # Windows do not know).
    graph.session.headers["Prefer"] = f'odata.maxpagesize={PAGE_SIZE}, outlook.timezone="UTC"'
    pool = settings.ARCHIVA_M365_IMPORT_MAILBOXES * PER_MAILBOX + 4
    graph.session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=pool))
    return graph


def _kinds(graph: Graph) -> set[str]:
    """Mail always; calendars and contacts when the app was granted their permissions."""
    roles = graph.roles()
    kinds = {ImportSource.Kind.MAIL.value}
    if "Calendars.Read" in roles:
        kinds.add(ImportSource.Kind.EVENT.value)
    if "Contacts.Read" in roles:
        kinds.add(ImportSource.Kind.CONTACT.value)
    return kinds


def _since(run: ImportRun) -> datetime | None:
    return datetime(run.since.year, run.since.month, run.since.day, tzinfo=UTC) if run.since else None


def _import_mailboxes(ctx: Context) -> None:
    pending = list(
        ctx.run.mailboxes.filter(state__in=[ImportMailbox.State.QUEUED, ImportMailbox.State.RUNNING]).order_by("pk")
    )
    with ThreadPoolExecutor(settings.ARCHIVA_M365_IMPORT_MAILBOXES, thread_name_prefix="m365-mailbox") as pool:
        list(pool.map(lambda mailbox: _in_thread(import_mailbox, ctx, mailbox), pending))


def _in_thread(work: Callable[[Context, ImportMailbox], None], ctx: Context, mailbox: ImportMailbox) -> None:
    """Run `work` in a pool thread with its own database connection, closed afterwards."""
    try:
        work(ctx, mailbox)
    finally:
        connections.close_all()


def _finish_or_release(run: ImportRun, owner: str) -> bool:
    """Done when no mailbox is left; else hand the run back (heartbeat cleared) for the next task."""
    with transaction.atomic():
        mine = ImportRun.objects.select_for_update().filter(pk=run.pk, owner=owner).first()
        if mine is None:
            return False  # taken over meanwhile: the new owner finishes it
        left = mine.mailboxes.filter(state__in=[ImportMailbox.State.QUEUED, ImportMailbox.State.RUNNING]).exists()
        now = timezone.now()
        if mine.slice_started_at:
            mine.active_seconds += max(0.0, (now - mine.slice_started_at).total_seconds())
        mine.heartbeat_at = mine.slice_started_at = None
        fields = ["active_seconds", "heartbeat_at", "slice_started_at"]
        if not left and mine.state == ImportRun.State.RUNNING:
            mine.state, mine.finished_at = ImportRun.State.DONE, now
            fields += ["state", "finished_at"]
        mine.save(update_fields=fields)
    # Paused meanwhile: nothing to go on with until someone resumes it.
    return not left or mine.state != ImportRun.State.RUNNING


def _fail(run: ImportRun, owner: str, reason: str) -> None:
    log.warning("import %s failed: %s", run.pk, reason)
    ImportRun.objects.filter(pk=run.pk, owner=owner).update(
        state=ImportRun.State.FAILED, error=reason[:2000], finished_at=timezone.now(), heartbeat_at=None
    )


class _Heartbeat:
    """Shows the run is alive every HEARTBEAT seconds, and notices a pause or a takeover."""

    def __init__(self, run_id: int, owner: str) -> None:
        self.run_id, self.owner = run_id, owner
        self.ctx: Context | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="m365-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        try:
            while not self._done.wait(HEARTBEAT):
                alive = ImportRun.objects.filter(
                    pk=self.run_id, owner=self.owner, state=ImportRun.State.RUNNING
                ).update(heartbeat_at=timezone.now())
                if not alive and self.ctx is not None:
                    self.ctx.stop.set()
        finally:
            connections.close_all()


# --- one mailbox -------------------------------------------------------------


def import_mailbox(ctx: Context, mailbox: ImportMailbox) -> None:
    """Every source of one mailbox; a Graph error ends this mailbox with its reason, the others go on."""
    close_old_connections()
    if mailbox.state == ImportMailbox.State.QUEUED:
        mailbox.state, mailbox.started_at = ImportMailbox.State.RUNNING, timezone.now()
        mailbox.save(update_fields=["state", "started_at"])
    try:
        if not mailbox.sources_listed:
            list_sources(ctx, mailbox)
        for source in mailbox.sources.filter(done=False).order_by("kind", "path"):
            if source.kind in ctx.kinds:
                import_source(ctx, mailbox, source)
    except Stopped:
        return
    except GraphError as exc:
        if transient(exc) and mailbox.throttled < MAX_THROTTLED:
            # Graph's client waited out every Retry-After it was given and Exchange still says
            # "later", or the network failed: this mailbox goes on in the next slice, from its saved links.
            ImportMailbox.objects.filter(pk=mailbox.pk).update(throttled=F("throttled") + 1)
            log.warning("import of mailbox %s: %s; going on in the next slice", mailbox.address, exc)
            return
        _mailbox_failed(mailbox, _reason(exc))
        return
    except Exception as exc:
        # Our own trouble (storage, database): recorded like Graph's, so one mailbox never stops the others.
        log.exception("import %s: mailbox %s", ctx.run.pk, mailbox.address)
        _mailbox_failed(mailbox, f"internal error: {exc.__class__.__name__}: {exc}")
        return
    mailbox.state, mailbox.finished_at = ImportMailbox.State.DONE, timezone.now()
    mailbox.save(update_fields=["state", "finished_at"])


def transient(exc: GraphError) -> bool:
    """Throttled beyond the Graph client's own retries, or the connection broke: worth another try later."""
    return exc.status in THROTTLED or exc.code in UNREACHABLE


def _reason(exc: GraphError) -> str:
    code = getattr(exc, "code", "") or ""
    message = getattr(exc, "message", "") or str(exc)
    return f"{code}: {message}" if code and code not in message else message


def _mailbox_failed(mailbox: ImportMailbox, reason: str) -> None:
    log.warning("import of mailbox %s failed: %s", mailbox.address, reason)
    mailbox.state, mailbox.error, mailbox.finished_at = ImportMailbox.State.FAILED, reason[:2000], timezone.now()
    mailbox.save(update_fields=["state", "error", "finished_at"])


def list_sources(ctx: Context, mailbox: ImportMailbox) -> None:
    """The mailbox's folders by `mailFolders/delta` (every folder of the tree, with its parent) and their paths."""
    folders: dict[str, dict[str, Any]] = {}
    for page in ctx.graph.pages(f"/users/{mailbox.user_id}/mailFolders/delta"):
        for folder in page.get("value", []):
            if "@removed" not in folder:
                folders[folder["id"]] = folder
    rows = [
        ImportSource(
            mailbox=mailbox,
            kind=ImportSource.Kind.MAIL,
            graph_id=folder_id,
            path=folder_path(folders, folder_id),
            total_items=int(folder.get("totalItemCount") or 0),
        )
        for folder_id in folders
    ]
    rows += [
        ImportSource(mailbox=mailbox, kind=ImportSource.Kind.EVENT, graph_id="", path="Calendar"),
        ImportSource(mailbox=mailbox, kind=ImportSource.Kind.CONTACT, graph_id="", path="Contacts"),
    ]
    with transaction.atomic():
        ImportSource.objects.bulk_create(rows, ignore_conflicts=True)
        mailbox.sources_listed = True
        mailbox.messages_expected = sum(row.total_items for row in rows)
        mailbox.save(update_fields=["sources_listed", "messages_expected"])


def folder_path(folders: dict[str, dict[str, Any]], folder_id: str) -> str:
    """ "Inbox/Projects": display names up to the root (the parent not listed), guarded against cycles."""
    names: list[str] = []
    seen: set[str] = set()
    current: str | None = folder_id
    while current in folders and current not in seen:
        seen.add(current)
        names.append(str(folders[current].get("displayName") or current))
        current = folders[current].get("parentFolderId")
    return "/".join(reversed(names))


# --- one folder (or the calendar, or the contacts) ------------------------------


@dataclass
class Batch:
    items: list[Item] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    bytes: int = 0


def import_source(ctx: Context, mailbox: ImportMailbox, source: ImportSource) -> None:
    """Page through the source from its saved link, storing each batch before saving the link after it."""
    batch = Batch()
    try:
        with ThreadPoolExecutor(PER_MAILBOX, thread_name_prefix="m365-download") as downloads:
            for page, next_link, delta_link in _pages(ctx, mailbox, source):
                entries = _fresh(
                    ctx, mailbox, [entry for entry in page if "@removed" not in entry and _wanted(ctx, entry)]
                )
                if source.kind == ImportSource.Kind.MAIL:
                    fetched = _download_page(ctx, downloads, mailbox, source, entries)
                else:
                    fetched = [
                        calendar_items.to_item(source.kind, mailbox.address, source.path, entry) for entry in entries
                    ]
                for item, skipped in fetched:
                    if item is not None:
                        batch.items.append(item)
                        batch.bytes += _size(item)
                    if skipped:
                        batch.skipped.append(skipped)
                last = not next_link or bool(delta_link)
                if last or len(batch.items) >= settings.ARCHIVA_M365_IMPORT_BATCH or ctx.stop.is_set():
                    stored = bool(batch.items)
                    _commit(ctx, mailbox, source, batch, next_link, delta_link)
                    batch = Batch()
                    if stored:  # a slice ends after a batch that did something, never on an empty folder
                        ctx.check()
    finally:
        _discard(batch)  # what was fetched but not stored: fetched again from the saved link


def _download_page(
    ctx: Context, downloads: ThreadPoolExecutor, mailbox: ImportMailbox, source: ImportSource, entries: list[Any]
) -> list[tuple[Item | None, dict[str, str]]]:
    """Every message of a page, downloaded 4 at a time; if one fails, the spool files of the others go too."""
    futures = [downloads.submit(_download, ctx, mailbox, source, entry) for entry in entries]
    wait(futures)
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is None:
        return [f.result() for f in futures]
    _discard(Batch(items=[item for f in futures if f.exception() is None and (item := f.result()[0]) is not None]))
    raise failed


def _discard(batch: Batch) -> None:
    for item in batch.items:
        if isinstance(item.content, Path):
            item.content.unlink(missing_ok=True)
    batch.items.clear()


def _pages(ctx: Context, mailbox: ImportMailbox, source: ImportSource) -> Iterator[tuple[list[Any], str, str]]:
    """(entries, the link to the page after, the delta link once the last page is reached)."""
    if source.next_link:
        start, params = source.next_link, None
    else:
        start, params = _first_request(ctx, mailbox, source)
    for page in ctx.graph.pages(start, params):
        yield page.get("value", []), page.get("@odata.nextLink", ""), page.get("@odata.deltaLink", "")


def _first_request(ctx: Context, mailbox: ImportMailbox, source: ImportSource) -> tuple[str, dict[str, str]]:
    user = f"/users/{mailbox.user_id}"
    if source.kind == ImportSource.Kind.EVENT:
        return f"{user}/events", {}
    if source.kind == ImportSource.Kind.CONTACT:
        return f"{user}/contacts", {}
    params = {"$select": MESSAGE_FIELDS}
    if ctx.since is not None:
        # Message delta supports $filter on receivedDateTime (ge/gt) only; entries are checked again in _wanted.
        params["$filter"] = f"receivedDateTime ge {ctx.since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f"{user}/mailFolders/{source.graph_id}/messages/delta", params


def _fresh(ctx: Context, mailbox: ImportMailbox, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries not archived from this mailbox yet: a resumed (or repeated) import downloads nothing twice."""
    known = stored_graph_ids(ctx.run.tenant, mailbox.address, [str(entry.get("id", "")) for entry in entries])
    return [entry for entry in entries if entry.get("id") not in known]


def _wanted(ctx: Context, entry: dict[str, Any]) -> bool:
    if ctx.since is None:
        return True
    received = _received(entry)
    return received is None or received >= ctx.since


def _received(entry: dict[str, Any]) -> datetime | None:
    value = entry.get("receivedDateTime") or entry.get("createdDateTime")
    parsed = parse_datetime(value) if isinstance(value, str) else None
    return parsed if parsed is None or parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _size(item: Item) -> int:
    content = item.content
    return content.stat().st_size if isinstance(content, Path) else len(content)


def _download(
    ctx: Context, mailbox: ImportMailbox, source: ImportSource, entry: dict[str, Any]
) -> tuple[Item | None, dict[str, str]]:
    """One message's MIME through `$value`, spooled to a file when large; a message gone meanwhile is skipped."""
    if ctx.stop.is_set():
        raise Stopped
    spool = Spool(spool_dir())
    try:
        ctx.graph.download(f"/users/{mailbox.user_id}/messages/{entry['id']}/$value", spool)
    except GraphError as exc:
        spool.discard()
        if getattr(exc, "code", "") in GONE or getattr(exc, "status", 0) == 404:
            return None, {"id": entry["id"], "reason": _reason(exc)}
        raise
    except BaseException:
        spool.discard()
        raise
    item = Item(
        kind="mail",
        mailbox=mailbox.address,
        folder=source.path,
        graph_id=entry["id"],
        content=spool.content(),
        sha256=spool.sha256,
        received=_received(entry),
    )
    return item, {}


def _commit(
    ctx: Context, mailbox: ImportMailbox, source: ImportSource, batch: Batch, next_link: str, delta_link: str
) -> None:
    """Store the batch durably, then (only then) save the link after it and count it."""
    if batch.items:
        store_items(ctx.run.tenant, batch.items)
    mails = sum(1 for item in batch.items if item.kind == "mail")
    others = len(batch.items) - mails
    today = timezone.now().astimezone(UTC).date()
    with transaction.atomic():
        source.next_link = "" if delta_link else next_link
        source.delta_link = delta_link or source.delta_link
        source.done = bool(delta_link) or not next_link
        source.imported += len(batch.items)
        source.save(update_fields=["next_link", "delta_link", "done", "imported"])
        if not batch.items and not batch.skipped:
            return
        # Progress again: the count of slices ended by throttling starts over.
        ImportMailbox.objects.filter(pk=mailbox.pk).update(
            messages_imported=F("messages_imported") + mails, items_imported=F("items_imported") + others, throttled=0
        )
        if batch.skipped:
            _note_skipped(mailbox, batch.skipped)
        ImportRun.objects.filter(pk=ctx.run.pk).update(
            messages_imported=F("messages_imported") + mails,
            items_imported=F("items_imported") + others,
            bytes_imported=F("bytes_imported") + batch.bytes,
        )
        _count_day(ctx.run.tenant_id, today, mails, others)


def _note_skipped(mailbox: ImportMailbox, skipped: list[dict[str, str]]) -> None:
    """Keep the first 100 skipped items per mailbox: enough to explain, bounded in size."""
    current = ImportMailbox.objects.select_for_update().get(pk=mailbox.pk)
    current.skipped = (current.skipped + skipped)[:100]
    current.save(update_fields=["skipped"])


def _count_day(tenant_id: int, day: date, messages: int, items: int) -> None:
    """Add to the day's counts in one statement: mailbox threads of one tenant count the same day at once."""
    table = ImportDay._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, day, messages, items) VALUES (%s, %s, %s, %s) "  # noqa: S608  # the table name is ours
            f"ON CONFLICT (tenant_id, day) DO UPDATE SET messages = {table}.messages + excluded.messages, "
            f"items = {table}.items + excluded.items",
            [tenant_id, day, messages, items],
        )
