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

from archive.items import StoreFailed
from infra.storage import StorageError
from infra.text import storable_text
from ingest.delivery import publish
from m365 import changes, items, notifications, subscriptions
from m365.graph import Graph, GraphError
from m365.models import Connection
from m365.sync import Notification, Subscription
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
    passing = changes.Trouble | StoreFailed | requests.RequestException | StorageError | OperationalError | OSError
    return isinstance(exc, passing)


class _Graphs:
    """One Graph client per tenant for a task's run (its token is reused)."""

    def __init__(self) -> None:
        self.clients: dict[int, Graph] = {}

    def of(self, tenant: Tenant) -> Graph:
        if tenant.pk not in self.clients:
            connection = Connection.objects.filter(tenant=tenant).first()
            if connection is None or not connection.is_configured:
                raise NoConnection(f"tenant {tenant.pk} has no configured Microsoft 365 connection")
            self.clients[tenant.pk] = Graph(connection)
        return self.clients[tenant.pk]


class NoConnection(Exception):
    """The tenant's connection is gone or incomplete: its notifications cannot be processed."""


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
def sweep_notifications(at_start: bool = False) -> int:
    """The periodic sweep; at a worker's start without the grace period, so
    what a broker fault left behind is processed at once."""
    return notifications.sweep(grace=0 if at_start else None)


@shared_task
def sync_calendars_and_contacts() -> int:
    """Archive the events and contacts that changed in every synchronised
    mailbox (periodic: Graph's notifications here cover messages only);
    returns how many mailboxes failed (logged; the next run tries again)."""
    graphs = _Graphs()
    failed = 0
    for subscription in Subscription.objects.select_related("tenant").filter(state=Subscription.State.ACTIVE):
        try:
            items.sync_items(graphs.of(subscription.tenant), subscription)
        except Exception:
            log.warning("events and contacts of %s could not be read", subscription.graph_id, exc_info=True)
            failed += 1
    return failed


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


@shared_task
def reconcile_tenant(tenant_id: int) -> int:
    """Reconcile one tenant's subscriptions now (its connection was saved); returns the failures."""
    connection = Connection.objects.select_related("tenant").filter(tenant_id=tenant_id).first()
    if connection is None:
        return 0
    return reconcile_connection(connection).failed


def reconcile_connection(connection: Connection) -> subscriptions.Outcome:
    """The subscriptions one connection should have: one per mailbox while its
    switch is on, none when off.  A connection without its ids cannot reach
    Graph: its subscriptions are only marked removed here (Graph drops them
    at expiry; meanwhile `/o365` refuses their notifications)."""
    if not connection.is_configured:
        for subscription in notifications.subscriptions_of(connection.tenant).filter(state=Subscription.State.ACTIVE):
            subscriptions.mark_removed(subscription)
        return subscriptions.Outcome()
    targets = [
        subscriptions.Target(mailbox.graph_id, mailbox.primary_address)
        for mailbox in connection.tenant.m365_mailboxes.filter(has_mailbox=True)
        if mailbox.primary_address
    ]
    return subscriptions.reconcile(
        Graph(connection), connection.tenant, str(connection.directory_id), connection.sync_folders, targets
    )
