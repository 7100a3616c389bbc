"""Calendar events and contacts of a synced mailbox, read from Graph every
`ARCHIVA_M365_ITEMS_INTERVAL`: written as iCalendar and vCard by the same
writer as the import's (m365/calendar_items.py), so re-reading an unchanged
item stores nothing new (`store_items` is idempotent per content hash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from archive import access as archive_access
from archive.items import Item, Kind, record_deletion, store_items
from m365.calendar_items import contact_vcard, event_ics, graph_instant
from m365.graph import Graph, GraphError
from m365.sync import ItemWatermark, Subscription

log = logging.getLogger(__name__)

# (kind, Graph collection under /users/{id}, folder shown in the archive, writer)
SOURCES: tuple[tuple[Kind, str, str, Callable[[dict[str, Any]], bytes]], ...] = (
    ("event", "events", "Calendar", event_ics),
    ("contact", "contacts", "Contacts", contact_vcard),
)
PAGE = 100


def sync_items(graph: Graph, subscription: Subscription) -> int:
    """Archive the mailbox's events and contacts changed since the last run
    (all of them the first time), and record as deleted those archived that
    the mailbox no longer lists; returns how many were stored or checked."""
    total = 0
    for source in SOURCES:
        try:
            total += _sync_kind(graph, subscription, *source)
        except GraphError as exc:
            if exc.status != 403:
                raise
            # Calendars.Read or Contacts.Read not granted: the connection page names
            # the missing permission; the other kind still syncs.
            log.warning("%ss of %s not readable: %s", source[0], subscription.mailbox, exc)
    return total


def _sync_kind(
    graph: Graph,
    subscription: Subscription,
    kind: Kind,
    collection: str,
    folder: str,
    writer: Callable[[dict[str, Any]], bytes],
) -> int:
    mark = ItemWatermark.objects.filter(tenant=subscription.tenant, user_id=subscription.user_id, kind=kind).first()
    since = mark.modified_until if mark else None
    newest = since
    listed: set[str] = set()
    total = 0
    # The whole collection is listed every time (the JSON only, no bytes are
    # written for what did not change): that is how deletions are seen.
    for page in graph.pages(f"/users/{subscription.user_id}/{collection}", {"$top": str(PAGE)}):
        batch: list[Item] = []
        for entry in page.get("value", []):
            if not isinstance(entry.get("id"), str):
                continue
            listed.add(entry["id"])
            modified = graph_instant(entry.get("lastModifiedDateTime"))
            if since and modified and modified < since:
                continue
            newest = max(filter(None, (newest, modified)), default=None)
            batch.append(Item(kind, subscription.mailbox, folder, entry["id"], writer(entry), received=modified))
        if batch:
            store_items(subscription.tenant, batch)
            total += len(batch)
    archived = archive_access.mailbox_places(subscription.tenant, subscription.mailbox, kind)
    for graph_id, (_, deleted) in archived.items():
        if not deleted and graph_id not in listed:
            record_deletion(subscription.tenant, subscription.mailbox, graph_id)
            total += 1
    if newest and newest != since:
        ItemWatermark.objects.update_or_create(
            tenant=subscription.tenant,
            user_id=subscription.user_id,
            kind=kind,
            defaults={"modified_until": newest},
        )
    return total
