"""What a stored notification does to the archive, in a worker.

created or updated → the message's folder read from Graph and recorded
(a move) when the archive has the message, else its MIME fetched and stored
through `archive.items.store_items`; deleted → the deletion recorded (never
deleted from the archive).
Lifecycle events: reauthorizationRequired renews the subscription,
subscriptionRemoved recreates it and resyncs the mailbox by delta, missed
resyncs.  Everything here is safe to run twice: storing is idempotent per
(mailbox, item, bytes) and recording a folder or deletion is a plain set.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.utils import timezone

from archive import access as archive_access
from archive.items import Item, record_deletion, record_folder_change, store_items
from m365 import subscriptions
from m365.graph import Graph, GraphError
from m365.spool import Spool, spool_dir
from m365.sync import FolderDelta, Notification, Subscription

log = logging.getLogger(__name__)

# A message up to this size is passed as bytes; a larger one as its spool file.
MAX_ATTEMPTS = 8  # then the notification is set aside with its error (System Status shows it)
FOLDER_CACHE_MAILBOXES = 256
RESYNC_BATCH = 50  # messages stored together by a resync (≤ 50 × the spool's threshold in memory, the rest spooled)


class Trouble(Exception):
    """Ours or Graph's passing trouble: the notification is tried again later."""


# GraphError codes with no HTTP status that will not go away by waiting.
PERMANENT_CODES = frozenset({"foreign_url", "link_loop"})


def is_transient(exc: GraphError) -> bool:
    """Throttling, Graph's own trouble, or no answer at all (status 0): worth another try."""
    if exc.status == 0:
        return exc.code not in PERMANENT_CODES
    return exc.status in (408, 429) or exc.status >= 500


# --- folder paths ----------------------------------------------------------------


@dataclass
class Folders:
    """A mailbox's folders: id → (display name, parent id)."""

    by_id: dict[str, tuple[str, str]] = field(default_factory=dict)

    def path(self, folder_id: str) -> str | None:
        if folder_id not in self.by_id:
            return None
        names: list[str] = []
        seen: set[str] = set()
        current = folder_id
        while current in self.by_id and current not in seen:  # `seen`: a cycle in Graph's answer ends the walk
            seen.add(current)
            name, current = self.by_id[current]
            names.append(name)
        return "/".join(reversed(names))


_folders: OrderedDict[tuple[int, str], Folders] = OrderedDict()
_folders_lock = threading.Lock()


def load_folders(graph: Graph, user_id: str) -> Folders:
    """Every folder of the mailbox, flat, from `mailFolders/delta` (the root
    itself is not listed, so a path starts below it: "Inbox/Projects")."""
    folders = Folders()
    for page in graph.pages(f"/users/{user_id}/mailFolders/delta"):
        for folder in page.get("value", []):
            if "@removed" in folder or not isinstance(folder.get("id"), str):
                continue
            folders.by_id[folder["id"]] = (
                str(folder.get("displayName") or ""),
                str(folder.get("parentFolderId") or ""),
            )
    return folders


def folder_path(graph: Graph, subscription: Subscription, folder_id: str) -> str:
    """The folder's path, from the per-mailbox cache, reloaded once on an unknown id."""
    key = (subscription.tenant_id, subscription.user_id)
    with _folders_lock:
        cached = _folders.get(key)
    if cached is not None and (path := cached.path(folder_id)) is not None:
        return path
    fresh = load_folders(graph, subscription.user_id)
    with _folders_lock:
        _folders[key] = fresh
        _folders.move_to_end(key)
        while len(_folders) > FOLDER_CACHE_MAILBOXES:
            _folders.popitem(last=False)
    path = fresh.path(folder_id)
    if path is None:
        raise Trouble(f"folder {folder_id} is not among the mailbox's folders")
    return path


# --- messages --------------------------------------------------------------------


def _received(message: dict[str, Any]) -> datetime | None:
    value = message.get("receivedDateTime")
    return subscriptions.parse_graph_time(value, timezone.now()) if isinstance(value, str) else None


def place(graph: Graph, subscription: Subscription, message_id: str) -> bool:
    """A message created or changed (moved) in the mailbox: its folder recorded
    when the archive has it (an import or an earlier notification stored it:
    no download), else fetched and stored.  False when it is gone already
    (its deletion's own notification records that)."""
    try:
        message = graph.get(
            f"/users/{subscription.user_id}/messages/{message_id}", {"$select": "id,parentFolderId,receivedDateTime"}
        )
    except GraphError as exc:
        if exc.status == 404:
            log.info("message %s of %s is gone before we could read it", message_id, subscription.graph_id)
            return False
        raise
    folder = folder_path(graph, subscription, str(message.get("parentFolderId") or ""))
    if record_folder_change(subscription.tenant, subscription.mailbox, message_id, folder):
        return True
    return fetch_and_store(graph, subscription, message_id, folder, _received(message))


def fetch_and_store(
    graph: Graph, subscription: Subscription, message_id: str, folder: str, received: datetime | None = None
) -> bool:
    """Download a message's MIME and store it in `folder`; False when it is gone already."""
    item = fetch(graph, subscription, message_id, folder, received)
    if item is None:
        return False
    store_items(subscription.tenant, [item])
    return True


def fetch(
    graph: Graph, subscription: Subscription, message_id: str, folder: str, received: datetime | None = None
) -> Item | None:
    """A message of the mailbox as an archive item (its MIME downloaded); None when it is gone already."""
    try:
        content = _download(graph, f"/users/{subscription.user_id}/messages/{message_id}/$value")
    except GraphError as exc:
        if exc.status == 404:
            log.info("message %s of %s is gone before we could fetch it", message_id, subscription.graph_id)
            return None
        raise
    return Item(
        kind="mail",
        mailbox=subscription.mailbox,
        folder=folder,
        graph_id=message_id,
        content=content,
        received=received,
    )


class _Batch:
    """Items fetched during a resync, stored RESYNC_BATCH at a time (one
    transaction and flush each, as the import does) and always before a
    folder's delta state is saved: the state never runs ahead of the archive."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.items: list[Item] = []

    def add(self, item: Item | None) -> None:
        if item is not None:
            self.items.append(item)
            if len(self.items) >= RESYNC_BATCH:
                self.flush()

    def flush(self) -> None:
        items, self.items = self.items, []
        if items:
            store_items(self.subscription.tenant, items)

    def discard(self) -> None:
        """On failure: the spool files of items not stored are removed."""
        for item in self.items:
            if isinstance(item.content, Path):
                item.content.unlink(missing_ok=True)
        self.items = []


def _download(graph: Graph, path: str) -> bytes | Path:
    """The MIME bytes, or over the spool's threshold its file (store_items consumes it)."""
    sink = Spool(spool_dir())
    try:
        graph.download(path, sink)
        return sink.content()
    except BaseException:
        sink.discard()
        raise


def resync(graph: Graph, subscription: Subscription) -> int:
    """Catch up with the mailbox by delta query per folder (after missed
    notifications or a recreated subscription); returns how many messages
    were looked at.  Messages that left a folder and turned up in no other
    are recorded as deleted; after a full listing (no delta state yet, or
    Graph forgot it), so are the archived ones no folder holds any more."""
    folders = load_folders(graph, subscription.user_id)
    with _folders_lock:
        _folders[(subscription.tenant_id, subscription.user_id)] = folders
    archived = archive_access.mailbox_places(subscription.tenant, subscription.mailbox)
    seen: set[str] = set()
    left: set[str] = set()
    full = True
    batch = _Batch(subscription)
    try:
        for folder_id in folders.by_id:
            path = folders.path(folder_id) or ""
            listing = _FolderListing(graph, subscription, folder_id, before_checkpoint=batch.flush)
            for message in listing:
                if "@removed" in message:
                    left.add(message["id"])
                    continue
                seen.add(message["id"])
                if archived.get(message["id"]) == (path, False):
                    continue  # archived in this very folder: nothing to write (most of a mailbox, most times)
                if not record_folder_change(subscription.tenant, subscription.mailbox, message["id"], path):
                    batch.add(fetch(graph, subscription, message["id"], path, _received(message)))
            full = full and listing.full
        batch.flush()
    finally:
        batch.discard()
    gone = left - seen
    if full:
        gone |= {graph_id for graph_id, (_, deleted) in archived.items() if not deleted} - seen
    for message_id in gone:
        record_deletion(subscription.tenant, subscription.mailbox, message_id)
    return len(seen) + len(gone)


class _FolderListing:
    """A folder's messages changed since its stored deltaLink, or all of them
    (`full`) the first time or when Graph no longer knows the state (410);
    the new deltaLink is stored once the pages are through."""

    def __init__(
        self, graph: Graph, subscription: Subscription, folder_id: str, before_checkpoint: Callable[[], None]
    ) -> None:
        self.graph, self.subscription, self.folder_id = graph, subscription, folder_id
        self.before_checkpoint = before_checkpoint
        self.saved = FolderDelta.objects.filter(
            tenant=subscription.tenant, user_id=subscription.user_id, folder_id=folder_id
        ).first()
        self.full = self.saved is None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._pages()
        except GraphError as exc:
            if exc.status != 410 or self.full:
                raise
            log.info("delta state of folder %s is gone at Graph; listing it in full", self.folder_id)
            self.saved, self.full = None, True
            yield from self._pages()

    def _pages(self) -> Iterator[dict[str, Any]]:
        user_id = self.subscription.user_id
        start = self.saved.delta_link if self.saved else f"/users/{user_id}/mailFolders/{self.folder_id}/messages/delta"
        params = None if self.saved else {"$select": "id,parentFolderId,receivedDateTime"}
        for page in self.graph.pages(start, params):
            for message in page.get("value", []):
                if isinstance(message.get("id"), str):
                    yield message
            if link := page.get("@odata.deltaLink"):
                self.before_checkpoint()
                FolderDelta.objects.update_or_create(
                    tenant=self.subscription.tenant,
                    user_id=user_id,
                    folder_id=self.folder_id,
                    defaults={"delta_link": link},
                )


# --- one notification ----------------------------------------------------------------


def handle(graph: Graph, notification: Notification) -> None:
    subscription = notification.subscription
    if notification.kind == Notification.Kind.LIFECYCLE:
        _lifecycle(graph, subscription, notification.event)
        return
    message_id = str(notification.payload.get("resourceData", {}).get("id", ""))
    if notification.event in ("created", "updated"):
        place(graph, subscription, message_id)
    elif notification.event == "deleted":
        record_deletion(subscription.tenant, subscription.mailbox, message_id)


def _lifecycle(graph: Graph, subscription: Subscription, event: str) -> None:
    if event == "reauthorizationRequired":
        subscriptions.renew(graph, subscription)
    elif event == "subscriptionRemoved":
        fresh = subscriptions.recreate(graph, subscription) if subscription.state == Subscription.State.ACTIVE else None
        resync(graph, fresh or subscription)
    elif event == "missed":
        resync(graph, subscription)
