"""The worker's synchronisation tasks: ids only, thin, safe to run twice.

`process_notifications` takes stored notifications through `m365.changes`;
`sweep_notifications` publishes those a broker fault left behind;
`maintain_subscriptions` (hourly beat) creates, renews and removes Graph
subscriptions to match each connection's "synchronize folders" switch.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

import requests
from celery import shared_task
from django.db import OperationalError
from django.db.models import F
from django.utils import timezone

from infra.storage import StorageError
from infra.text import storable_text
from ingest.delivery import publish
from m365 import changes, notifications, subscriptions
from m365.graph import Graph, GraphError
from m365.models import Connection
from m365.sync import Notification
from tenants.models import Tenant

log = logging.getLogger(__name__)

BACKOFF_FIRST = 5
BACKOFF_MAX = 600


def backoff(attempts: int) -> int:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s … capped at 10 minutes."""
    return random.randint(BACKOFF_FIRST, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1)))  # noqa: S311  (jitter, not a secret)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, GraphError):
        return changes.is_transient(exc)
    return isinstance(exc, changes.Trouble | requests.RequestException | StorageError | OperationalError | OSError)


class _Graphs:
    """One Graph client per tenant for a task's run (its token is reused)."""

    def __init__(self) -> None:
        self.clients: dict[int, Graph] = {}

    def of(self, tenant: Tenant) -> Graph:
        if tenant.pk not in self.clients:
            connection = Connection.objects.filter(tenant=tenant).first()
            if connection is None:
                raise GraphError(0, "NoConnection", "the tenant has no Microsoft 365 connection any more")
            self.clients[tenant.pk] = Graph(connection)
        return self.clients[tenant.pk]


def _finish(notification: Notification, error: str = "") -> None:
    Notification.objects.filter(pk=notification.pk).update(processed_at=timezone.now(), error=storable_text(error))


@shared_task(acks_late=True)
def process_notifications(ids: list[int]) -> int:
    """Process stored notifications in the order they arrived; returns how many
    were processed.  Passing trouble (Graph 429/5xx, network, storage,
    database) is retried with backoff in a task of its own, up to
    changes.MAX_ATTEMPTS; a notification's own failure is kept with its error."""
    rows = (
        Notification.objects.select_related("subscription__tenant")
        .filter(pk__in=ids, processed_at__isnull=True)
        .order_by("pk")
    )
    graphs = _Graphs()
    done = 0
    for notification in rows:
        Notification.objects.filter(pk=notification.pk).update(attempts=F("attempts") + 1)
        attempts = notification.attempts + 1
        try:
            changes.handle(graphs.of(notification.subscription.tenant), notification)
        except Exception as exc:
            if _transient(exc) and attempts < changes.MAX_ATTEMPTS:
                _retry(notification, exc, attempts)
                continue
            log.error("notification %s failed: %s", notification.pk, exc, exc_info=not isinstance(exc, GraphError))
            _finish(notification, f"{type(exc).__name__}: {exc}")
        else:
            _finish(notification)
        done += 1
    return done


def _retry(notification: Notification, exc: Exception, attempts: int) -> None:
    countdown = backoff(attempts)
    log.warning("notification %s: %s; retrying in %d s", notification.pk, exc, countdown)
    due = timezone.now() + timedelta(seconds=countdown)
    Notification.objects.filter(pk=notification.pk).update(enqueued_at=due, error=storable_text(str(exc)))
    try:
        publish(notifications.PROCESS_TASK, ([notification.pk],), countdown=countdown)
    except Exception:
        log.warning("broker unavailable; notification %s left for the sweep", notification.pk, exc_info=True)


@shared_task
def sweep_notifications() -> int:
    return notifications.sweep()


@shared_task
def maintain_subscriptions() -> int:
    """Reconcile every connection's subscriptions (create, renew, remove);
    returns how many changes failed (logged; the next run tries again)."""
    failed = 0
    for connection in Connection.objects.select_related("tenant"):
        try:
            outcome = reconcile_connection(connection)
        except Exception:
            log.warning("subscriptions of tenant %s could not be reconciled", connection.tenant_id, exc_info=True)
            failed += 1
            continue
        failed += outcome.failed
    return failed


def reconcile_connection(connection: Connection) -> subscriptions.Outcome:
    """The subscriptions one connection should have: one per mailbox while its
    switch is on, none when off."""
    targets = [
        subscriptions.Target(mailbox.graph_id, mailbox.primary_address)
        for mailbox in connection.tenant.m365_mailboxes.filter(has_mailbox=True)
        if mailbox.primary_address
    ]
    return subscriptions.reconcile(
        Graph(connection), connection.tenant, connection.directory_id, connection.sync_folders, targets
    )
