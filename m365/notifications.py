"""Graph change notifications as `/o365` receives them: parsed, checked,
stored durably, then handed to a worker by task name.

Graph wants 202 within 3 seconds, so the request does only this: one SELECT
of the subscriptions the batch names, one INSERT of its items, and the
publishing in a background thread (a slow broker must not hold the answer;
a lost publish is found again by `sweep`, which goes by the rows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import db
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from infra.text import storable_text
from ingest.delivery import not_given_out, publish
from m365.sync import Notification, Subscription
from tenants.models import Tenant

log = logging.getLogger(__name__)

PROCESS_TASK = "m365.tasks.process_notifications"
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
MAX_ITEMS = 1000  # Graph sends at most a few hundred per batch; more is not Graph
PUBLISH_CHUNK = 100
KEEP = timedelta(days=30)  # processed notifications are kept this long, for the record

# Publishing off the request's thread (one thread: publishes are short and in order).
background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m365-publish")


class BadBatch(ValueError):
    """The body is not a notification batch (answered 400 with this message)."""


class Refused(Exception):
    """An item does not belong to a subscription of ours (answered 403, nothing stored)."""


@dataclass(frozen=True)
class Item:
    subscription_id: str
    client_state: str
    directory_id: str
    kind: str  # Notification.Kind
    event: str  # changeType or lifecycleEvent
    payload: dict[str, Any]  # the item without its clientState


def client_state_digest(client_state: str) -> str:
    return hashlib.sha256(client_state.encode()).hexdigest()


def parse(body: bytes) -> list[Item]:
    """The items of a notification batch `{"value": [...]}`; BadBatch naming what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBatch(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("value"), list):
        raise BadBatch('the body is not a notification batch: expected {"value": [...]}')
    values = document["value"]
    if not values:
        raise BadBatch('the batch is empty: "value" has no notifications')
    if len(values) > MAX_ITEMS:
        raise BadBatch(f"the batch has {len(values)} notifications; at most {MAX_ITEMS} are accepted")
    return [_item(n, value) for n, value in enumerate(values)]


def _item(n: int, value: object) -> Item:
    if not isinstance(value, dict):
        raise BadBatch(f"notification {n} is not an object")
    fields = {}
    for name in ("subscriptionId", "clientState", "tenantId"):
        field = value.get(name)
        if not isinstance(field, str) or not field:
            raise BadBatch(f"notification {n} has no {name}")
        fields[name] = field
    if "lifecycleEvent" in value:
        kind, event = Notification.Kind.LIFECYCLE, value["lifecycleEvent"]
        if event not in LIFECYCLE_EVENTS:
            raise BadBatch(f"notification {n}: unknown lifecycleEvent {str(event)[:40]!r}")
    else:
        kind, event = Notification.Kind.CHANGE, value.get("changeType")
        if event not in CHANGE_TYPES:
            raise BadBatch(f"notification {n}: changeType must be one of created, updated, deleted")
        data = value.get("resourceData")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise BadBatch(f"notification {n} has no resourceData.id")
    payload = {key: item for key, item in value.items() if key != "clientState"}
    return Item(fields["subscriptionId"], fields["clientState"], fields["tenantId"], kind, event, payload)


def check(items: list[Item]) -> dict[str, Subscription]:
    """The subscriptions the items belong to, by Graph id; Refused unless every
    item names an active subscription of ours, with its clientState (compared
    in constant time) and its directory."""
    ids = {item.subscription_id for item in items}
    known = {s.graph_id: s for s in Subscription.objects.filter(graph_id__in=ids, state=Subscription.State.ACTIVE)}
    for item in items:
        subscription = known.get(item.subscription_id)
        named = repr(item.subscription_id[:64])  # for the log: whatever the sender put there, short and escaped
        if subscription is None:
            raise Refused(f"unknown subscription {named}")
        if not hmac.compare_digest(client_state_digest(item.client_state), subscription.client_state_sha256):
            raise Refused(f"clientState does not match for subscription {named}")
        if item.directory_id.lower() != subscription.directory_id.lower():
            raise Refused(f"tenantId does not match for subscription {named}")
    return known


def accept(body: bytes) -> list[int]:
    """Parse, check and store a batch (one transaction); returns the stored ids
    after handing them to the publisher.  BadBatch / Refused store nothing."""
    items = parse(body)
    subscriptions = check(items)
    now = timezone.now()
    rows = [
        Notification(
            tenant_id=subscriptions[item.subscription_id].tenant_id,
            subscription=subscriptions[item.subscription_id],
            kind=item.kind,
            event=item.event,
            payload=item.payload,
            received_at=now,
        )
        for item in items
    ]
    with transaction.atomic():
        Notification.objects.bulk_create(rows)
        ids = [row.pk for row in rows]
        # Published once committed, so a worker never looks for rows not there yet.
        transaction.on_commit(lambda: background.submit(_enqueue_in_background, ids))
    return ids


def enqueue(ids: list[int]) -> int:
    """Publish processing tasks for these notifications and mark them enqueued;
    on broker trouble leave them for the sweep.  How many were published."""
    published: list[int] = []
    try:
        for start in range(0, len(ids), PUBLISH_CHUNK):
            chunk = ids[start : start + PUBLISH_CHUNK]
            publish(PROCESS_TASK, (chunk,))
            published += chunk
    except Exception:
        log.warning("broker unavailable; %d notifications left for the sweep", len(ids) - len(published), exc_info=True)
    if published:
        try:
            Notification.objects.filter(pk__in=published).update(enqueued_at=timezone.now())
        except Exception:
            log.warning("could not mark %d notifications enqueued", len(published), exc_info=True)
    return len(published)


def _enqueue_in_background(ids: list[int]) -> None:
    try:
        enqueue(ids)
    finally:
        db.connection.close()  # this thread's own connection: not left open between batches


def stranded(
    now: datetime | None = None, grace: float | None = None, published_before: datetime | None = None
) -> QuerySet[Notification]:
    """Notifications not processed that no worker has (recently) been given,
    by the deliveries' rule (`ingest.delivery.not_given_out`): with
    `published_before`, also those published before a worker's broker
    connection was lost, whose tasks its restart may have lost."""
    given_out = not_given_out(now or timezone.now(), grace, published_before)
    return Notification.objects.filter(processed_at__isnull=True).filter(given_out)


def sweep(limit: int = 10_000, grace: float | None = None, published_before: datetime | None = None) -> int:
    """Publish stranded notifications, oldest first; returns how many were published."""
    due = stranded(grace=grace, published_before=published_before)
    ids = list(due.order_by("received_at").values_list("pk", flat=True)[:limit])
    published = enqueue(ids) if ids else 0
    if published:
        log.info("sweep enqueued %d stranded notifications", published)
    return published


def prune(now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete processed notifications older than KEEP (the charts show two
    days; the archive keeps what they did), a batch at a time; how many."""
    cutoff = (now or timezone.now()) - KEEP
    old = list(Notification.objects.filter(processed_at__lt=cutoff).order_by("pk").values_list("pk", flat=True)[:batch])
    if old:
        Notification.objects.filter(pk__in=old).delete()
    return len(old)


# --- the worker's bookkeeping --------------------------------------------------------


def unprocessed(ids: list[int]) -> QuerySet[Notification]:
    """These notifications, those not processed yet, in the order they arrived."""
    return (
        Notification.objects.select_related("subscription__tenant")
        .filter(pk__in=ids, processed_at__isnull=True)
        .order_by("pk")
    )


def count_attempt(notification: Notification) -> int:
    """Count a processing attempt; the attempts so far, this one included."""
    Notification.objects.filter(pk=notification.pk).update(attempts=F("attempts") + 1)
    return notification.attempts + 1


def finish(notification: Notification, error: str = "") -> None:
    """Processed: done, or given up on with the reason (kept with it)."""
    Notification.objects.filter(pk=notification.pk).update(processed_at=timezone.now(), error=storable_text(error))


def retry_due(notification: Notification, countdown: int, error: str) -> None:
    """Its retry is published for `countdown` seconds from now: the sweep waits that long and its window."""
    due = timezone.now() + timedelta(seconds=countdown)
    Notification.objects.filter(pk=notification.pk).update(enqueued_at=due, error=storable_text(error))


def active_subscriptions() -> QuerySet[Subscription]:
    """Every tenant's active subscriptions (the periodic events-and-contacts read)."""
    return Subscription.objects.select_related("tenant").filter(state=Subscription.State.ACTIVE)


# --- per tenant ----------------------------------------------------------------------


def for_tenant(tenant: Tenant) -> QuerySet[Notification]:
    """The one way to a tenant's notifications (charts, status)."""
    return Notification.objects.filter(tenant=tenant)


def subscriptions_of(tenant: Tenant) -> QuerySet[Subscription]:
    """The one way to a tenant's subscriptions."""
    return Subscription.objects.filter(tenant=tenant)
