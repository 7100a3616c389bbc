"""Celery tasks of the Microsoft 365 connection: ids only, safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from . import access
from .directory import sync_mailboxes
from .graph import GraphError

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def sync_directories() -> int:
    """The daily mailbox list of every connection that passed its last test; how many were synced.

    One organization's trouble (a revoked consent, an expired certificate)
    is logged and does not stop the others; the page shows the last sync.
    """
    synced = 0
    for connection_id in access.connections_to_sync():
        connection = access.connection_by_id(connection_id)
        try:
            sync_mailboxes(connection)
        except GraphError as exc:
            log.warning("m365 mailbox sync of tenant %s failed: %s", connection.tenant_id, exc)
            continue
        synced += 1
    return synced
