"""Making an accepted message durable: store per tenant, record, enqueue.

The order is the guarantee behind `250`: bytes durable in every recipient
tenant's bucket (`store_objects`, in parallel threads), then the Delivery
rows committed (`GroupCommitter`, one transaction for every message that
is ready at that moment), and only then the reply.  Enqueueing comes after
the reply and is best effort: a message recorded but not enqueued is found
by the sweep.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.db import close_old_connections, connections, transaction
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


def store_objects(envelope: Envelope, spool: Path, sha256: str) -> None:
    """Put the spooled bytes durably into every recipient tenant's bucket."""
    store = get_store()
    key = raw_key(sha256)
    for route, _ in envelope.routes.values():
        # The spool file is the ingest's own and is only deleted afterwards.
        store.put_file(route.bucket, key, spool, sha256, consume=True)


def delivery_rows(envelope: Envelope, queue_id: str, sha256: str, size: int) -> list[Delivery]:
    now = timezone.now()
    return [
        Delivery(
            tenant_id=route.tenant_id,
            queue_id=queue_id,
            sha256=sha256,
            size=size,
            storage_key=raw_key(sha256),
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


PUBLISH_CHUNK = 50


def enqueue(delivery_ids: list[int]) -> bool:
    """Publish processing tasks, one per chunk of ids; on broker trouble leave them for the sweep."""
    from ingest.tasks import process_deliveries, process_delivery

    if not delivery_ids:
        return True
    try:
        if len(delivery_ids) == 1:
            process_delivery.apply_async((delivery_ids[0],), retry=False)
        for start in range(0, len(delivery_ids) if len(delivery_ids) > 1 else 0, PUBLISH_CHUNK):
            process_deliveries.apply_async((delivery_ids[start : start + PUBLISH_CHUNK],), retry=False)
        return True
    except Exception:
        log.warning("broker unavailable; %d deliveries left for the sweep", len(delivery_ids), exc_info=True)
        try:
            Delivery.objects.filter(pk__in=delivery_ids).update(enqueued_at=None)
        except Exception:
            log.warning("could not mark deliveries unqueued; the sweep's requeue window covers them", exc_info=True)
        return False


@dataclass
class _Pending:
    envelope: Envelope
    spool: Path
    sha256: str
    size: int
    queue_id: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    rows: list[Delivery] = field(default_factory=list)


class GroupCommitter:
    """Makes many concurrent sessions' messages durable with few transactions.

    Storage runs in a thread pool, one message per thread: concurrent
    fsyncs share the filesystem's journal commits, and S3 PUTs overlap.
    Recording is one thread that takes every message waiting and inserts
    them in one transaction: one commit per batch, and no lock contention
    on SQLite.  Each session waits for its own message to pass both; a
    failed batch answers its sessions 451 and the senders retry.
    """

    def __init__(self, store_threads: int = 32, max_batch: int = 500):
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(max_workers=store_threads, thread_name_prefix="ingest-store")
        self._db_q: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._publish_q: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._db_loop, name="ingest-db", daemon=True),
            threading.Thread(target=self._publish_loop, name="ingest-publish", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def commit(self, envelope: Envelope, spool: Path, sha256: str, size: int) -> str:
        """Store and record one message; returns its queue id once both are durable."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, store_objects, envelope, spool, sha256)
        pending = _Pending(envelope, spool, sha256, size, new_queue_id(), loop.create_future(), loop)
        self._db_q.put(pending)
        await pending.future
        return pending.queue_id

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db_q.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _batches(self, source: queue.SimpleQueue):
        """Yield lists of everything waiting (at least one item), until None."""
        while True:
            first = source.get()
            if first is None:
                return
            batch, done = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            yield batch
            if done:
                return

    def _db_loop(self) -> None:
        try:
            for batch in self._batches(self._db_q):
                self._record(batch)
        finally:
            self._publish_q.put(None)
            connections.close_all()

    def _record(self, batch: list[_Pending]) -> None:
        for pending in batch:
            pending.rows = delivery_rows(pending.envelope, pending.queue_id, pending.sha256, pending.size)
        try:
            close_old_connections()
            with transaction.atomic():
                created = Delivery.objects.bulk_create([row for pending in batch for row in pending.rows])
        except Exception as exc:
            log.exception("recording %d messages failed; they will be answered 451", len(batch))
            for pending in batch:
                pending.loop.call_soon_threadsafe(_settle, pending.future, exc)
            return
        for pending in batch:
            pending.loop.call_soon_threadsafe(_settle, pending.future, None)
        self._publish_q.put([row.pk for row in created])

    def _publish_loop(self) -> None:
        try:
            while (ids := self._publish_q.get()) is not None:
                enqueue(ids)
        finally:
            connections.close_all()


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
