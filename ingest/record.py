"""Making an accepted message durable: store per tenant, record, enqueue.

The order is the guarantee behind `250`: bytes durable in every recipient
tenant's bucket, then the Delivery rows committed, and only then the reply
(`GroupCommitter`: one storage flush and one transaction for every message
that is ready at that moment).  Enqueueing comes after
the reply and is best effort: a message recorded but not enqueued is found
by the sweep.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from infra.insert import driver_cursor, insert_plan, insert_rows
from infra.storage import FolderStore, Item, get_store, pack_key, raw_key, sync_filesystems
from ingest import held, pack
from ingest.delivery import enqueue, sweep_at_start
from ingest.directory import Route
from ingest.models import Delivery
from ingest.tuning import (
    CHECKPOINT_INTERVAL,
    CONNECTION_CHECK_INTERVAL,
    PUBLISH_CHUNK,
    PUBLISH_DELAY,
    PUBLISH_LOADED,
    PUBLISH_LOADED_DELAY,
    WAL_SIZE_LIMIT,
)

log = logging.getLogger(__name__)

# An envelope on the committer's socket (`Envelope.to_wire`): MAIL FROM, peer, HELO,
# TLS version and cipher, then per tenant (tenant id, bucket, region, recipients).
WireEnvelope = tuple[str, str | None, str, str, str, list[tuple[int, str, str, list[str]]]]
# A Delivery row as column values (`delivery_values`, `insert_deliveries`).
Row = dict[str, Any]


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

    def to_wire(self) -> WireEnvelope:
        """Plain values for the committer's socket: pickling the dataclasses
        themselves took three times as long, on both sides, per message."""
        routes = [(route.tenant_id, route.bucket, route.region, rcpts) for route, rcpts in self.routes.values()]
        return (self.mail_from, self.peer_ip, self.helo, self.tls_version, self.tls_cipher, routes)

    @classmethod
    def from_wire(cls, wire: WireEnvelope) -> Envelope:
        mail_from, peer_ip, helo, tls_version, tls_cipher, routes = wire
        envelope = cls(mail_from, peer_ip, helo, tls_version, tls_cipher)
        for tenant_id, bucket, region, recipients in routes:
            route = _wire_routes.get((tenant_id, bucket, region))
            if route is None:  # a frozen dataclass is slow to make; a few tenants send most mail
                if len(_wire_routes) >= 10_000:
                    _wire_routes.clear()
                route = _wire_routes[(tenant_id, bucket, region)] = Route(tenant_id, bucket, region, None)
            envelope.routes[tenant_id] = (route, recipients)
        return envelope


_wire_routes: dict[tuple[int, str, str], Route] = {}


def new_queue_id() -> str:
    """The id in `250 2.0.0 <id>`: 24 hex digits, the time in milliseconds, then 52 random bits.

    Time first, so ids issued together sort together: a batch's rows land
    in the same few pages of the queue-id indexes instead of one random page
    each (measured: 11 KB of SQLite WAL per row instead of 18).  Two ids
    collide only within one millisecond and then with odds of 2**-52.
    Not a secret (every sender sees its own), so `random`, which reseeds in
    a forked process, rather than a getrandom(2) call for each message.
    """
    return f"{time.time_ns() // 1_000_000:011X}{random.getrandbits(52):013X}"


def delivery_values(
    envelope: Envelope,
    queue_id: str,
    sha256: str,
    size: int,
    placement: dict[int, tuple[str, int]],
    now: datetime | None = None,
) -> list[Row]:
    """The columns of a message's Delivery rows, one per recipient tenant;
    `placement` maps each tenant to the object holding the bytes and their offset in it.
    Held mail (a negative tenant id, see ingest.held) gets no Delivery."""
    now = now or timezone.now()
    return [
        {
            "tenant_id": route.tenant_id,
            "queue_id": queue_id,
            "sha256": sha256,
            "size": size,
            "storage_key": placement[route.tenant_id][0],
            "storage_offset": placement[route.tenant_id][1],
            "mail_from": envelope.mail_from[:512],
            "rcpt_to": recipients,
            "peer_ip": envelope.peer_ip,
            "helo": envelope.helo[:255],
            "tls_version": envelope.tls_version,
            "tls_cipher": envelope.tls_cipher,
            "received_at": now,
            # Set once the task is published (`enqueue`): a crash or a broker
            # down in between leaves it for the next sweep, not the requeue window.
            "enqueued_at": None,
        }
        for route, recipients in envelope.routes.values()
        if not held.is_held(route.tenant_id)
    ]


def insert_deliveries(rows: list[Row]) -> list[int]:
    """Insert Delivery rows given as column values, in one transaction; their ids (in no particular order).

    The committer's hot path: `infra.insert`'s plan, on the driver's own
    cursor.  Django's `atomic()` and cursor wrappers took half the
    committer's Python time, more than the INSERT itself, so outside a
    transaction (the committer) the statements run between our own BEGIN
    and COMMIT; inside one (held mail, a test, a script), in a savepoint
    of `atomic()`, so a refused row leaves the caller's transaction usable.
    """
    connection = delivery_connection()
    if connection.in_atomic_block or not connection.get_autocommit():
        return [row[0] for row in insert_rows(connection, Delivery, rows)]
    plan = insert_plan(connection, Delivery)
    with driver_cursor(connection) as cursor:
        # As Django begins one: SQLite's configured mode (IMMEDIATE here), else plain.
        cursor.execute(f"BEGIN {getattr(connection, 'transaction_mode', None) or ''}".rstrip())
        try:
            ids = [row[0] for row in plan.insert(cursor, rows)]
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
    return ids


def flush_paths() -> list[Path]:
    """Folders whose filesystems hold what a batch must make durable: the
    folder store's buckets and an SQLite database (PostgreSQL and S3 are
    durable on commit and on PUT)."""
    paths: list[Path] = []
    store = get_store()
    if isinstance(store, FolderStore):
        paths.append(store.root)
    if flush_after_commit():
        paths.append(Path(delivery_connection().settings_dict["NAME"]).parent)
    return paths


@dataclass
class Job:
    """One message handed to the committer.

    Bytes may come without their SHA-256 (None): the ingest leaves hashing
    a message held in memory to the committer, off its event loop (see
    `ingest.dataread.DataSink`), and the job hashes them when it is made.
    A spooled file always comes with its hash, made as it was written."""

    request_id: int
    envelope: Envelope
    message: bytes | Path  # the bytes, or a spool file the committer removes
    sha256: str  # given as None for bytes in memory: __post_init__ hashes them
    size: int
    queue_id: str = field(default_factory=new_queue_id)
    # tenant id -> (key of the object holding the bytes, their offset): set when stored
    placement: dict[int, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sha256 is None:
            if not isinstance(self.message, bytes):
                raise ValueError(f"a spooled message comes with its SHA-256: {self.message}")
            self.sha256 = hashlib.sha256(self.message).hexdigest()


Outcome = tuple[Job, Exception | None]  # None: stored and recorded


def commit_batch(batch: list[Job], flush: list[Path]) -> tuple[list[Outcome], list[int]]:
    """Make a batch of messages durable: store, record, one flush.

    Returns every job's outcome and the ids of the Delivery rows made: what
    the committer does for each batch (`GroupCommitter.commit`), and what
    tests and benchmarks call to put mail in the archive exactly as the
    ingest does.  The flush comes after the rows where one flush covers both
    (`flush_after_commit`), else before them.  A message whose row the
    database refuses fails alone (`_record`); held mail (ingest.held) is
    recorded in the same transaction as the Deliveries.
    """
    stored, outcomes = _store(batch)
    if not stored:
        return outcomes, []
    after = flush_after_commit()
    if not after:
        try:
            sync_filesystems(flush)
        except Exception as exc:
            log.exception("flushing %d messages failed; they will be answered 451", len(stored))
            return outcomes + [(job, exc) for job in stored], []
    recorded, created = _record(stored, timezone.now())
    outcomes += recorded
    if after and created is not None:
        try:
            sync_filesystems(flush)
        except Exception as exc:  # the disk's error, or ours: 451 either way
            return flush_failed(outcomes, exc), []
    return outcomes, created or []


def _record(jobs: list[Job], now: datetime) -> tuple[list[Outcome], list[int] | None]:
    """Record the stored jobs in one transaction; the outcomes and the Delivery ids (None: nothing recorded).

    If the batch fails and the database itself is fine, one message's row
    may be the cause (e.g. a NUL byte in MAIL FROM, which PostgreSQL
    refuses): the jobs are then recorded one by one, so only the bad one is
    answered 451, never the other tenants' messages in its batch.
    """
    try:
        return [(job, None) for job in jobs], _insert(jobs, now)
    except Exception as exc:
        if len(jobs) == 1 or isinstance(exc, (OperationalError, InterfaceError)):
            log.exception("recording %d messages failed; they will be answered 451", len(jobs))
            return [(job, exc) for job in jobs], None
        log.warning("recording a batch of %d messages failed (%s); recording them one by one", len(jobs), exc)
    outcomes: list[Outcome] = []
    created: list[int] = []
    for job in jobs:
        try:
            created += _insert([job], now)
            outcomes.append((job, None))
        except Exception as exc:
            log.error("recording message %s failed; it will be answered 451: %s", job.queue_id, exc)
            outcomes.append((job, exc))
    return outcomes, created


def _insert(jobs: list[Job], now: datetime) -> list[int]:
    """The jobs' Delivery rows (and HeldMessage rows, rarely) in one transaction; the Delivery ids."""
    rows = [
        row
        for job in jobs
        for row in delivery_values(job.envelope, job.queue_id, job.sha256, job.size, job.placement, now)
    ]
    held_rows = [
        row
        for job in jobs
        if min(job.envelope.routes) < 0  # held mail: rare
        for row in held.held_rows(job.envelope, job.queue_id, job.sha256, job.size, job.placement, now)
    ]
    if not held_rows:
        return insert_deliveries(rows)
    with transaction.atomic(using=delivery_connection().alias):
        held.record(held_rows)
        return insert_deliveries(rows) if rows else []


def delivery_connection() -> BaseDatabaseWrapper:
    """The database connection Delivery rows are written on."""
    return connections[Delivery.objects.db]


def flush_after_commit() -> bool:
    """Whether one flush after the rows' COMMIT makes the objects and the rows
    durable: SQLite's WAL is not fsynced per commit, so on SQLite it does.  A
    database whose COMMIT is durable by itself (PostgreSQL) must never hold
    rows whose objects are not: there the objects are flushed first."""
    return delivery_connection().vendor == "sqlite"


def flush_failed(outcomes: list[Outcome], error: Exception) -> list[Outcome]:
    """The outcomes of a batch whose flush failed: every message is answered 451.
    Its rows stay (SQLite committed them); the sweep processes what was stored."""
    log.error("flushing %d messages failed; they will be answered 451: %s", len(outcomes), error)
    return [(job, failure or error) for job, failure in outcomes]


def store_jobs(batch: list[Job]) -> tuple[list[Job], list[Outcome]]:
    """Put jobs' bytes in place exactly as the committer does (packs, spool
    files linked in), not yet flushed: for other writers of the same
    bookkeeping (archive.items), which record their own rows."""
    return _store(batch)


def _store(batch: list[Job]) -> tuple[list[Job], list[Outcome]]:
    """Put the batch's messages in place (not yet flushed): the jobs stored, and the failures.

    The messages held in memory go into one pack per tenant bucket (one
    object instead of one per message); a message spooled to disk (a large
    one) stays an object of its own, linked into place without a copy.
    """
    items: list[Item] = []
    owners: list[list[tuple[Job, int, int]]] = []  # per item: (job, tenant id, offset of its bytes)
    packs: dict[str, list[tuple[Job, int]]] = {}
    holds = False
    for job in batch:
        for tenant_id, (route, _) in job.envelope.routes.items():
            holds = holds or held.is_held(tenant_id)
            if isinstance(job.message, Path):
                items.append((route.bucket, raw_key(job.sha256), job.message, job.sha256))
                owners.append([(job, tenant_id, 0)])
            else:
                packs.setdefault(route.bucket, []).append((job, tenant_id))
    for bucket, members in packs.items():
        built = pack.build((job.queue_id, job.sha256, job.message) for job, _ in members)  # type: ignore[misc]  # packs hold bytes only (above)
        # No SHA-256 of the whole pack: it is named by its index (ingest.pack).
        items.append((bucket, pack_key(built.name), built.data, None))
        owners.append(
            [(job, tenant_id, offset) for (job, tenant_id), offset in zip(members, built.offsets, strict=True)]
        )
    if holds:
        try:
            held.ensure_bucket()
        except Exception:  # its messages fail to store below (451); the others go on
            log.exception("cannot create the holding area's bucket")
    try:
        errors = get_store().put_objects(items, consume=True, durable=False)
    except Exception as exc:
        log.exception("storing %d messages failed; they will be answered 451", len(batch))
        errors = [exc] * len(items)
    finally:
        for job in batch:
            if isinstance(job.message, Path):
                job.message.unlink(missing_ok=True)  # stored (linked or copied), or refused
    failed: dict[int, Exception] = {}
    for (_, key, _, _), error, owned in zip(items, errors, owners, strict=True):
        for job, tenant_id, offset in owned:
            if error is not None:
                failed.setdefault(id(job), error)
            else:
                job.placement[tenant_id] = (key, offset)
    if failed:
        log.error("could not store %d of %d messages: %s", len(failed), len(batch), next(iter(failed.values())))
    stored = [job for job in batch if id(job) not in failed]
    return stored, [(job, failed[id(job)]) for job in batch if id(job) in failed]


def _checkpoint_wal() -> None:
    """Copy into the SQLite database what its WAL holds, as far as no reader needs it, without waiting."""
    with delivery_connection().cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


class GroupCommitter:
    """Makes many concurrent sessions' messages durable with few flushes and transactions.

    `commit` takes a batch (everything the ingest handed over up to that
    moment): store (the batch's messages into their tenants' buckets with
    one `put_objects`: on the folder store, written and renamed into place;
    on S3, parallel PUTs), record (one transaction of Delivery rows), then
    one `syncfs` for the objects and, on SQLite, the rows.  It returns each
    message's outcome once its batch has passed all three, or the error that
    stopped it (the session answers 451 and the sender retries).

    All three run on the caller's thread, one batch after the other.
    Requests that arrive meanwhile wait in the committer's socket and form
    the next batch, so a busy committer makes large batches.  A flush on a
    thread of its own, overlapping the next batch's store and record, cost
    more than it gained on two cores (measured, bench/smtp.py at 20
    sessions: 3,470 msgs/s with it, 3,800 without, 8 % less CPU a message):
    handing each batch to that thread and back took a futex wake, the
    interpreter lock and a pipe each way, and the commit waited for the
    running flush anyway.  Publishing the processing tasks is a thread of
    its own, after the replies.

    On SQLite, the committer's own commits never checkpoint the WAL (a
    checkpoint copies pages into the database and waits for two fsyncs: it
    made one commit in ten take 5-20 ms); a thread of its own checkpoints
    every CHECKPOINT_INTERVAL seconds, without blocking the commits.  That
    alone let the WAL grow without end under steady load (bench/smtp.py:
    170 MB after 15 s, ~11 KB a message): SQLite starts the WAL over only
    when a write begins with every frame copied, and commits kept landing
    while the thread's checkpoint ran.  So after each of the thread's
    checkpoints, the committer's next batch first checkpoints the few
    frames committed since (`_catch_up`, on its own thread, where no commit
    can overlap it): its next transaction then writes from the start of the
    WAL again, over blocks the file already has.  Measured: the WAL stays
    at ~13 MB instead of growing by 11 MB/s; the rate is unchanged
    (bench/ab.py, 5 rounds: 0.99 ×, CPU 0.99 ×).
    """

    def __init__(self) -> None:
        self._flush_paths = flush_paths()
        self._recorded: collections.deque[int] = collections.deque()  # ids not yet published
        self._recorded_waiting = threading.Event()  # set: the publisher has ids to take
        self._chunk_full = threading.Event()  # set: a chunk's worth is waiting, publish without delay
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._publish_loop, name="ingest-publish", daemon=True)]
        self._sqlite = delivery_connection().vendor == "sqlite"
        self._tuned = None  # the database connection that has auto-checkpoints off
        self._check_connection_at = 0.0  # when close_old_connections is next due
        self._checkpointed = threading.Event()  # set: the thread checkpointed; the committer catches up
        if self._sqlite:
            self._threads.append(threading.Thread(target=self._checkpoint_loop, name="ingest-checkpoint", daemon=True))
        for thread in self._threads:
            thread.start()

    def commit(self, batch: list[Job]) -> list[Outcome]:
        """Store, record and flush the batch; every job's outcome.  Whatever
        goes wrong fails this batch (451s), never the committer."""
        try:
            now = time.monotonic()
            if now >= self._check_connection_at:  # a long-lived process: drop a connection the server closed
                close_old_connections()
                self._check_connection_at = now + CONNECTION_CHECK_INTERVAL
            if self._sqlite:
                self._no_auto_checkpoints()
                if self._checkpointed.is_set():
                    self._catch_up()
            outcomes, created = commit_batch(batch, self._flush_paths)
        except Exception as exc:
            log.exception("a batch of %d messages failed; they will be answered 451", len(batch))
            for job in batch:
                if isinstance(job.message, Path):
                    job.message.unlink(missing_ok=True)  # the sender sends it again
            return [(job, exc) for job in batch]
        if not created:
            self._check_connection_at = 0.0  # the database may have gone: check before the next batch
        else:
            self._recorded.extend(created)
            if not self._recorded_waiting.is_set():  # under load the publisher is awake already
                self._recorded_waiting.set()
            elif len(self._recorded) >= PUBLISH_CHUNK and not self._chunk_full.is_set():
                self._chunk_full.set()
        return outcomes

    def close(self) -> None:
        """Publish what was committed, then stop."""
        self._stop.set()
        self._chunk_full.set()
        self._recorded_waiting.set()
        for thread in self._threads:
            thread.join(timeout=60)
        connections.close_all()

    def _no_auto_checkpoints(self) -> None:
        connection = delivery_connection()
        connection.ensure_connection()
        if connection.connection is not self._tuned:  # a new connection (the first, or after an error)
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
                # When the WAL starts over, a file grown larger by a burst is cut back to this.
                cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._tuned = connection.connection

    def _catch_up(self) -> None:
        """Checkpoint the frames committed since the thread's last checkpoint,
        so the next transaction starts the WAL over (see the class docstring).
        A failure costs nothing but the restart: the thread tries again."""
        self._checkpointed.clear()
        try:
            _checkpoint_wal()
        except Exception:
            log.warning("WAL catch-up checkpoint failed", exc_info=True)

    def _checkpoint_loop(self) -> None:
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    close_old_connections()
                    _checkpoint_wal()
                    self._checkpointed.set()
                except Exception:
                    log.warning("WAL checkpoint failed; trying again", exc_info=True)
        finally:
            connections.close_all()

    def _publish_loop(self) -> None:
        """Publish the recorded ids PUBLISH_DELAY after the first of them, or
        as soon as PUBLISH_CHUNK of them wait, in chunks of PUBLISH_CHUNK;
        under load (PUBLISH_LOADED of them within PUBLISH_DELAY) they gather
        on, to PUBLISH_LOADED_DELAY after the first or a full chunk.

        Publishing is Python work that competes with the commits for the
        interpreter (and, on the filesystem broker, a file per task), and a
        worker's task costs more per task than per message: under load this
        makes one task per PUBLISH_CHUNK deliveries instead of one per commit
        batch, for at most PUBLISH_LOADED_DELAY more before processing.
        The committer only wakes this thread when it is waiting for work, so
        a busy committer hands over its ids without a thread switch per batch.
        """
        try:
            if self._sqlite:
                self._no_auto_checkpoints_here()
            self._sweep_at_start()
            while not self._stop.is_set() or self._recorded:
                self._recorded_waiting.wait()
                first = time.monotonic()
                # Let more ids gather, until a chunk is full (returns at once when closing).
                if not self._chunk_full.wait(PUBLISH_DELAY) and len(self._recorded) >= PUBLISH_LOADED:
                    self._chunk_full.wait(max(0.0, first + PUBLISH_LOADED_DELAY - time.monotonic()))
                self._chunk_full.clear()
                self._recorded_waiting.clear()  # before taking: ids recorded after this wake us again
                ids = []
                with contextlib.suppress(IndexError):
                    while True:
                        ids.append(self._recorded.popleft())
                enqueue(ids)
        finally:
            connections.close_all()

    @staticmethod
    def _no_auto_checkpoints_here() -> None:
        """This thread marks published deliveries enqueued (`mark_enqueued`):
        its commits must not checkpoint the WAL either (see the class docstring)."""
        try:
            with delivery_connection().cursor() as cursor:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
        except Exception:
            log.warning("could not turn off the publisher's WAL auto-checkpoints", exc_info=True)

    @staticmethod
    def _sweep_at_start() -> None:
        """Publish what a committer that died (kill -9, a crash) recorded but
        never published, now rather than at the first sweep of the beat."""
        sweep_at_start("committer")
