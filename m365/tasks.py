"""Celery tasks of the Microsoft 365 connection, its import and its folder sync: ids only, thin, safe to run twice.

`sync_directories` (daily) tests every configured connection (organization,
domains, mailboxes);
`process_notifications` takes stored notifications through `m365.changes`;
`sweep_notifications` publishes those a broker fault left behind;
`maintain_subscriptions` (hourly beat) creates, renews and removes Graph
subscriptions to match each connection's "synchronize folders" switch;
`run_import` and `resume_stale_imports` run the historical import (m365.importer).
"""

from __future__ import annotations

import logging
import random

import requests
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

from archive.items import StoreFailed
from infra.storage import StorageError
from ingest.delivery import publish, published_before_from
from m365 import access, changes, import_actions, importer, items, notifications, subscriptions
from m365.connection import check_connection
from m365.graph import Graph, GraphError
from m365.models import Connection
from m365.sync import Notification
from tenants.models import Tenant

log = logging.getLogger(__name__)
SLICE_PAUSE = 5.0  # seconds between two slices of one import

RECONCILE_TASK = "m365.tasks.reconcile_subscriptions"
SYNC_ITEMS_TASK = "m365.tasks.sync_mailbox_items"

BACKOFF_FIRST = 5
BACKOFF_MAX = 600


def backoff(attempts: int) -> int:
    """Exponential backoff with full jitter: 5 s, 10 s, 20 s … capped at 10 minutes."""
    return random.randint(BACKOFF_FIRST, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1)))  # noqa: S311  (jitter, not a secret)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, GraphError):
        return changes.is_transient(exc)
    # SoftTimeLimitExceeded: a long resync ran out of time; what it did is
    # kept (each folder's delta state), so the next try goes on from there.
    passing = (
        changes.Trouble
        | StoreFailed
        | requests.RequestException
        | StorageError
        | OperationalError
        | OSError
        | SoftTimeLimitExceeded
    )
    return isinstance(exc, passing)


class _Graphs:
    """One Graph client per tenant for a task's run (its token is reused)."""

    def __init__(self) -> None:
        self.clients: dict[int, Graph] = {}

    def of(self, tenant: Tenant) -> Graph:
        if tenant.pk not in self.clients:
            try:
                connection: Connection | None = tenant.m365_connection
            except Connection.DoesNotExist:
                connection = None
            if connection is None or not connection.is_configured:
                raise NoConnection(f"tenant {tenant.pk} has no configured Microsoft 365 connection")
            self.clients[tenant.pk] = Graph(connection)
        return self.clients[tenant.pk]


class NoConnection(Exception):
    """The tenant's connection is gone or incomplete: its notifications cannot be processed."""


@shared_task(acks_late=True)
def process_notifications(ids: list[int]) -> int:
    """Process stored notifications in the order they arrived; returns how many
    were processed.  Passing trouble (Graph 429/5xx, network, storage,
    database) is retried with backoff in a task of its own, up to
    changes.MAX_ATTEMPTS; a notification's own failure is kept with its error."""
    graphs = _Graphs()
    done = 0
    for notification in notifications.unprocessed(ids):
        attempts = notifications.count_attempt(notification)
        try:
            changes.handle(graphs.of(notification.subscription.tenant), notification)
        except Exception as exc:
            if _transient(exc) and attempts < changes.MAX_ATTEMPTS:
                _retry(notification, exc, attempts)
                if isinstance(exc, SoftTimeLimitExceeded):
                    # Out of time: the rest go on in a fresh task before the hard limit.
                    _republish([pk for pk in ids if pk > notification.pk])
                    break
                continue
            log.error("notification %s failed: %s", notification.pk, exc, exc_info=not isinstance(exc, GraphError))
            notifications.finish(notification, f"{type(exc).__name__}: {exc}")
        else:
            notifications.finish(notification)
        done += 1
    return done


def _retry(notification: Notification, exc: Exception, attempts: int) -> None:
    countdown = backoff(attempts)
    log.warning("notification %s: %s; retrying in %d s", notification.pk, exc, countdown)
    notifications.retry_due(notification, countdown, str(exc))
    try:
        publish(notifications.PROCESS_TASK, ([notification.pk],), countdown=countdown)
    except Exception:
        log.warning("broker unavailable; notification %s left for the sweep", notification.pk, exc_info=True)


def _republish(ids: list[int]) -> None:
    if not ids:
        return
    try:
        publish(notifications.PROCESS_TASK, (ids,))
    except Exception:
        log.warning("broker unavailable; %d notifications left for the sweep", len(ids), exc_info=True)


@shared_task
def sweep_notifications(at_start: bool = False, published_before: str | None = None) -> int:
    """The periodic sweep; at a worker's start without the grace period, so
    what a broker fault left behind is processed at once, and with
    `published_before` (ISO 8601: the worker got its broker back) also what
    was published before the connection was lost.  The periodic one also
    deletes processed notifications past notifications.KEEP."""
    if not at_start:
        notifications.prune()
        return notifications.sweep()
    return notifications.sweep(grace=0, published_before=published_before_from(published_before))


@shared_task
def sync_calendars_and_contacts() -> int:
    """Have every synchronised mailbox's events and contacts read (periodic:
    Graph's notifications here cover messages only), one task per mailbox so
    that a large one holds up no other; returns how many were published."""
    ids = list(notifications.active_subscriptions().values_list("pk", flat=True))
    return _fan_out(SYNC_ITEMS_TASK, ids)


@shared_task(acks_late=True)
def sync_mailbox_items(subscription_id: int) -> int:
    """Archive one mailbox's changed events and contacts; how many were stored or recorded."""
    subscription = notifications.active_subscriptions().filter(pk=subscription_id).first()
    if subscription is None:
        return 0  # removed since
    return items.sync_items(_Graphs().of(subscription.tenant), subscription)


@shared_task
def maintain_subscriptions() -> int:
    """Have every connection's subscriptions reconciled (created, renewed,
    removed), one task per connection; returns how many were published."""
    return _fan_out(RECONCILE_TASK, access.connection_ids())


@shared_task(acks_late=True)
def reconcile_subscriptions(connection_id: int) -> int:
    """Reconcile one connection's subscriptions (hourly, and when it is saved);
    returns the failures (logged; the next run tries again).  A tenant with
    more changes than one task's budget goes on in a fresh task."""
    try:
        connection = access.connection_by_id(connection_id)
    except Connection.DoesNotExist:
        return 0  # removed since: its subscriptions were stopped with it
    outcome = reconcile_connection(connection)
    if outcome.more:
        publish(RECONCILE_TASK, (connection_id,))
    return outcome.failed


def _fan_out(task: str, ids: list[int]) -> int:
    """Publish `task` once per id; what the broker refuses waits for the next period."""
    published = 0
    for pk in ids:
        try:
            publish(task, (pk,))
        except Exception:
            log.warning("broker unavailable; %d %s tasks left for the next run", len(ids) - published, task)
            break
        published += 1
    return published


def reconcile_connection(connection: Connection) -> subscriptions.Outcome:
    """The subscriptions one connection should have: one per mailbox while its
    switch is on, none when off.  A connection without its ids cannot reach
    Graph: its subscriptions are only marked removed here (Graph drops them
    at expiry; meanwhile `/o365` refuses their notifications)."""
    if not connection.is_configured:
        subscriptions.stop_all(connection.tenant_id)
        return subscriptions.Outcome()
    targets = [
        subscriptions.Target(mailbox.graph_id, mailbox.primary_address)
        for mailbox in access.mailboxes(connection.tenant)
        if mailbox.has_mailbox and mailbox.primary_address
    ]
    return subscriptions.reconcile(
        Graph(connection), connection.tenant, str(connection.directory_id), connection.sync_folders, targets
    )


@shared_task(acks_late=True)
def sync_directories() -> int:
    """The daily test of every configured connection; how many passed.

    A passing test reads the organization, the verified domains and the
    mailbox list again (with members' aliases); a failing one (a revoked
    consent, an expired certificate) is stored for the page like a test by
    hand and does not stop the others.
    """
    passed = 0
    for connection_id in access.connections_to_check():
        connection = access.connection_by_id(connection_id)
        result = check_connection(connection)
        if result.ok:
            passed += 1
        else:
            log.warning("m365 connection of tenant %s failed its daily test: %s", connection.tenant_id, result.error)
    return passed


# A slice stops starting batches after importer.TIME_BUDGET; the limits leave the batch in hand time to end.
@shared_task(acks_late=True, soft_time_limit=importer.TIME_BUDGET + 240, time_limit=importer.TIME_BUDGET + 300)
def run_import(run_id: int) -> bool | None:
    """Run an import for one time slice (claimed by heartbeat: a second copy of
    this task does nothing), then have a fresh task go on if there is more."""
    finished = importer.run_slice(run_id)
    if finished is False:
        # A short pause between slices: a slice that could not start (Graph unreachable) is never a tight loop.
        import_actions.publish_run(run_id, countdown=SLICE_PAUSE)
    return finished


@shared_task
def resume_stale_imports() -> int:
    """Imports whose worker died (or whose task was lost) go on: periodic, and at a worker's start."""
    return import_actions.resume_stale()
