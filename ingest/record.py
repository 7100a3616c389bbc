"""Making an accepted message durable: store per tenant, record, enqueue.

Runs in the ingest's thread pool (blocking I/O).  The order is the
guarantee behind `250`: bytes durable in every recipient tenant's bucket,
then the Delivery rows committed, and only then the reply.  Enqueueing is
best effort: a message recorded but not enqueued is found by the sweep.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from django.db import close_old_connections, transaction
from django.utils import timezone

from infra.storage import get_store, raw_key
from ingest.directory import Route
from ingest.models import Delivery

log = logging.getLogger(__name__)


@dataclass
class Envelope:
    """What SMTP told us about one message, beside its bytes."""

    mail_from: str
    peer_ip: str | None
    helo: str
    tls_version: str
    tls_cipher: str
    # tenant id → (route, the recipients of that tenant, as sent)
    routes: dict[int, tuple[Route, list[str]]] = field(default_factory=dict)

    def add_recipient(self, route: Route, address: str) -> None:
        _, recipients = self.routes.setdefault(route.tenant_id, (route, []))
        recipients.append(address)


def new_queue_id() -> str:
    return secrets.token_hex(8).upper()


def store_and_record(envelope: Envelope, spool: Path, sha256: str, size: int) -> str:
    """Store the spooled message for each tenant and record it; returns the queue id.

    Raises on any storage or database trouble; nothing is acknowledged then.
    """
    close_old_connections()
    store = get_store()
    key = raw_key(sha256)
    for route, _ in envelope.routes.values():
        store.put_file(route.bucket, key, spool, sha256)
    queue_id = new_queue_id()
    now = timezone.now()
    rows = [
        Delivery(
            tenant_id=route.tenant_id,
            queue_id=queue_id,
            sha256=sha256,
            size=size,
            storage_key=key,
            mail_from=envelope.mail_from[:512],
            rcpt_to=recipients,
            peer_ip=envelope.peer_ip,
            helo=envelope.helo[:255],
            tls_version=envelope.tls_version,
            tls_cipher=envelope.tls_cipher,
            received_at=now,
            # Optimistic: set before publishing, cleared if publishing
            # fails; the sweep also re-enqueues what stays unprocessed.
            enqueued_at=now,
        )
        for route, recipients in envelope.routes.values()
    ]
    with transaction.atomic():
        created = Delivery.objects.bulk_create(rows)
    enqueue([row.pk for row in created])
    return queue_id


def enqueue(delivery_ids: list[int]) -> bool:
    """Publish processing tasks; on broker trouble leave them for the sweep."""
    from ingest.tasks import process_delivery

    try:
        for delivery_id in delivery_ids:
            process_delivery.apply_async((delivery_id,), retry=False)
        return True
    except Exception:
        log.warning("broker unavailable; %d deliveries left for the sweep", len(delivery_ids), exc_info=True)
        try:
            Delivery.objects.filter(pk__in=delivery_ids).update(enqueued_at=None)
        except Exception:
            log.warning("could not mark deliveries unqueued; the sweep's requeue window covers them", exc_info=True)
        return False
