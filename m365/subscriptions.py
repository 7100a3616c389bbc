"""Graph change subscriptions per mailbox: created while the connection's
"synchronize folders" switch is on, renewed before they expire, removed
when it goes off or the connection goes.

Each subscription watches `users/{id}/messages` (created, updated, deleted)
and posts to `<SITE_ROOT>/o365`, both for changes and lifecycle events, with
a random clientState of its own that only its SHA-256 is kept of.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from m365.graph import Graph, GraphError
from m365.notifications import client_state_digest
from m365.sync import Subscription
from tenants.models import Tenant

log = logging.getLogger(__name__)

CHANGE_TYPES = "created,updated,deleted"
# Under three days: within every limit Graph has documented for message
# subscriptions (4,230 minutes before it was raised to 10,080), so a change
# on Microsoft's side never gets our requests refused.
LIFETIME = timedelta(minutes=4200)
# Renewed when less than this is left: the hourly beat gets many chances.
RENEW_BEFORE = timedelta(hours=24)
# Seconds one reconcile may spend before it leaves the rest to a fresh task
# (under the worker's 300 s soft limit per task).
RECONCILE_BUDGET = 200.0


@dataclass(frozen=True)
class Target:
    """A mailbox to subscribe to: its owner's Graph user id and primary address."""

    user_id: str
    address: str


def notification_url() -> str:
    return f"{settings.SITE_ROOT}/o365"


def messages_resource(user_id: str) -> str:
    return f"users/{user_id}/messages"


def graph_time(moment: datetime) -> str:
    """The ISO 8601 UTC form Graph expects (`2026-12-09T05:00:00Z`)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_graph_time(value: object, fallback: datetime) -> datetime:
    """Graph's expirationDateTime or receivedDateTime (`…Z`, up to 7
    fractional digits: Python 3.11 reads both), or `fallback`."""
    if not isinstance(value, str):
        return fallback
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def create(graph: Graph, tenant: Tenant, directory_id: str, target: Target) -> Subscription:
    """Subscribe to a mailbox's messages.  Graph first POSTs a validation
    request to `/o365`, so the site must be reachable from Graph."""
    client_state = secrets.token_urlsafe(48)  # 384 bits; Graph allows 128 characters
    wanted = timezone.now() + LIFETIME
    answer = graph.post(
        "/subscriptions",
        {
            "changeType": CHANGE_TYPES,
            "notificationUrl": notification_url(),
            "lifecycleNotificationUrl": notification_url(),
            "resource": messages_resource(target.user_id),
            "expirationDateTime": graph_time(wanted),
            "clientState": client_state,
            "latestSupportedTlsVersion": "v1_2",
        },
    )
    graph_id = answer.get("id")
    if not isinstance(graph_id, str) or not graph_id:
        raise GraphError(200, "InvalidResponse", "Graph created a subscription without an id")
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                tenant=tenant,
                directory_id=directory_id,
                user_id=target.user_id,
                mailbox=target.address.lower(),
                resource=messages_resource(target.user_id),
                graph_id=graph_id,
                client_state_sha256=client_state_digest(client_state),
                expires_at=parse_graph_time(answer.get("expirationDateTime"), wanted),
            )
    except IntegrityError:
        # Another reconcile subscribed this mailbox meanwhile: ours goes again.
        log.info(
            "mailbox %s of tenant %s was subscribed concurrently; dropping %s", target.user_id, tenant.pk, graph_id
        )
        _delete_quietly(graph, graph_id)
        return Subscription.objects.get(tenant=tenant, user_id=target.user_id, state=Subscription.State.ACTIVE)
    log.info("subscribed to %s of tenant %s: %s", subscription.resource, tenant.pk, graph_id)
    return subscription


def _delete_quietly(graph: Graph, graph_id: str) -> None:
    try:
        graph.delete(f"/subscriptions/{graph_id}")
    except GraphError as exc:  # it expires within three days, its notifications refused meanwhile
        log.warning("could not delete the duplicate subscription %s: %s", graph_id, exc)


def renew(graph: Graph, subscription: Subscription) -> Subscription:
    """Move the expiry forward (also Graph's answer to reauthorizationRequired);
    a subscription Graph no longer knows is recreated."""
    wanted = timezone.now() + LIFETIME
    try:
        answer = graph.patch(f"/subscriptions/{subscription.graph_id}", {"expirationDateTime": graph_time(wanted)})
    except GraphError as exc:
        if exc.status != 404:
            Subscription.objects.filter(pk=subscription.pk).update(error=str(exc)[:2000])
            raise
        log.warning("subscription %s is gone from Graph; recreating it", subscription.graph_id)
        return recreate(graph, subscription)
    subscription.expires_at = parse_graph_time(answer.get("expirationDateTime"), wanted)
    subscription.renewed_at = timezone.now()
    subscription.error = ""
    subscription.save(update_fields=["expires_at", "renewed_at", "error"])
    return subscription


def mark_removed(subscription: Subscription) -> None:
    subscription.state = Subscription.State.REMOVED
    subscription.removed_at = timezone.now()
    subscription.save(update_fields=["state", "removed_at"])


def remove(graph: Graph, subscription: Subscription) -> None:
    """Delete the subscription at Graph (already gone is fine) and mark it removed."""
    try:
        graph.delete(f"/subscriptions/{subscription.graph_id}")
    except GraphError as exc:
        if exc.status != 404:
            raise
    mark_removed(subscription)
    log.info("unsubscribed from %s: %s", subscription.resource, subscription.graph_id)


def stop_all(tenant_id: int) -> int:
    """Mark a tenant's active subscriptions removed without asking Graph (its
    connection is going: no credentials left to ask with); how many."""
    return Subscription.objects.filter(tenant_id=tenant_id, state=Subscription.State.ACTIVE).update(
        state=Subscription.State.REMOVED, removed_at=timezone.now()
    )


def recreate(graph: Graph, subscription: Subscription) -> Subscription:
    """A new subscription for the same mailbox (after subscriptionRemoved, or a
    renewal of one Graph forgot); the old one is marked removed first, so its
    late notifications are refused like any unknown subscription's."""
    if subscription.state == Subscription.State.ACTIVE:
        mark_removed(subscription)
    target = Target(subscription.user_id, subscription.mailbox)
    return create(graph, subscription.tenant, subscription.directory_id, target)


@dataclass
class Outcome:
    created: int = 0
    renewed: int = 0
    removed: int = 0
    failed: int = 0
    more: bool = False  # the time budget ran out with work left: run again


def reconcile(
    graph: Graph,
    tenant: Tenant,
    directory_id: str,
    enabled: bool,
    targets: list[Target],
    now: datetime | None = None,
    budget: float = RECONCILE_BUDGET,
) -> Outcome:
    """Bring a tenant's subscriptions in line with its connection: one active
    subscription per mailbox in `targets` while `enabled`, none otherwise;
    those expiring within RENEW_BEFORE renewed.  One mailbox's failure is
    logged and counted, and does not stop the others.  Each change is a
    Graph round trip (a creation also Graph's validation of `/o365`): after
    `budget` seconds it stops with `more` set, for a fresh task to go on."""
    now = now or timezone.now()
    deadline = time.monotonic() + budget
    outcome = Outcome()
    wanted = {t.user_id: t for t in targets} if enabled else {}
    active = list(Subscription.objects.filter(tenant=tenant, state=Subscription.State.ACTIVE))
    covered = {s.user_id for s in active if s.user_id in wanted and s.directory_id == directory_id}
    work: list[Callable[[], str]] = []
    for subscription in active:
        if subscription.user_id not in wanted or subscription.directory_id != directory_id:
            work.append(partial(_change, "removed", remove, graph, subscription))
        elif subscription.expires_at - now < RENEW_BEFORE:
            work.append(partial(_change, "renewed", renew, graph, subscription))
    for user_id, target in wanted.items():
        if user_id not in covered:
            work.append(partial(_change, "created", create, graph, tenant, directory_id, target))
    for index, step in enumerate(work):
        if index and time.monotonic() > deadline:  # at least one step a run: progress, whatever the budget
            outcome.more = True
            break
        try:
            done = step()
        except GraphError as exc:
            log.warning("subscriptions of tenant %s: %s", tenant.pk, exc)
            outcome.failed += 1
        else:
            setattr(outcome, done, getattr(outcome, done) + 1)
    return outcome


def _change(name: str, action: Callable[..., object], *args: object) -> str:
    action(*args)
    return name
