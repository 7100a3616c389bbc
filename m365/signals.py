"""Subscriptions follow their connection: a saved connection (its
"synchronize folders" switch, its ids) is reconciled by a worker at once
rather than at the next hourly run; a removed one's subscriptions stop
being accepted at once."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save, pre_delete
from django.dispatch import receiver

from ingest.delivery import publish
from m365.notifications import background

log = logging.getLogger(__name__)

RECONCILE_TASK = "m365.tasks.reconcile_subscriptions"  # m365.tasks.RECONCILE_TASK (tasks import Graph: not loaded here)


def _publish_reconcile(connection_id: int) -> None:
    try:
        publish(RECONCILE_TASK, (connection_id,))
    except Exception:  # the hourly run reconciles it anyway
        log.warning("could not publish the subscription reconcile of connection %s", connection_id, exc_info=True)


@receiver(post_save, sender="m365.Connection")
def connection_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Published off the request's thread: a slow broker must not hold the admin's save."""
    connection_id = instance.pk
    transaction.on_commit(lambda: background.submit(_publish_reconcile, connection_id))


@receiver(pre_delete, sender="m365.Connection")
def connection_removed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Graph's copies cannot be deleted without the connection's credentials;
    they expire within three days, and their notifications are refused meanwhile."""
    from m365.subscriptions import stop_all  # here: the models module loads this one, keep it light

    stop_all(instance.tenant_id)
