"""Taking deliveries as far as they go: verify, parse, archive (and, for tools, index).

The one path for the worker's task, `manage.py retry_failed` and the tests:
a single delivery is a batch of one.  Each step checks where a delivery
is, so running it again (a retry, a duplicate from the sweep) picks up where
the last run stopped.  Status changes are `ingest.delivery`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import OperationalError

from archive import actions
from archive import items as mailbox_items
from archive.documents import Content
from archive.models import Message, MessageSource
from archive.parser.parsed import ParsedReport
from infra.filelock import LockTimeout
from infra.storage import StorageError
from ingest import delivery as lifecycle
from ingest.models import Delivery

log = logging.getLogger(__name__)


def retryable() -> tuple[type[Exception], ...]:
    """Our own trouble, not the message's: storage, the search backend, the
    database, another indexer's turn that did not end (the embedded default)."""
    from search.backends.base import SearchUnavailable

    return (StorageError, SearchUnavailable, OperationalError, LockTimeout)


@dataclass
class Processed:
    """How a run ended: each delivery's status ("missing" for an unknown id),
    and the deliveries that met our own trouble (to retry later) with it."""

    status: dict[int, str] = field(default_factory=dict)
    troubled: dict[int, Exception] = field(default_factory=dict)
    archived: int = 0  # how many this run archived
    # Messages this run created, with their content (`index_new`), and how many it indexed.
    created: list[tuple[Message, Content]] = field(default_factory=list)
    indexed: int = 0
    merged: int = 0  # reports merged into Messages that existed before

    @property
    def index_later(self) -> bool:
        """Whether some message this run archived may wait for `index_pending`
        (a merge, a mailbox copy, one the index was down for)."""
        return self.merged > 0 or self.indexed < len(self.created)


def process_deliveries(delivery_ids: list[int], *, index: bool = False, index_new: bool = False) -> Processed:
    """Verify, parse and archive these deliveries; with `index`, index their
    messages here and now (tools, tests); with `index_new` (the worker), the
    messages this run created, from memory (`actions.index_new`), leaving
    the rest to `index_pending` (`Processed.index_later`).

    New reports are archived together (`actions.archive_batch`); if the batch
    fails for any reason but our own trouble (concurrent merges, a value the
    database refuses), each goes alone, so one bad report never holds back
    another's.  A report that fails alone is recorded with its reason; one
    that meets our trouble is left as it is, in `troubled`.
    """
    result = Processed()
    deliveries = lifecycle.load(delivery_ids)
    result.status = {pk: "missing" for pk in delivery_ids}
    lifecycle.mark_attempt(deliveries)
    sources = mailbox_items.sources_of(deliveries)
    batch = [item for d in deliveries if (item := _parsed(d, result, sources.get(d.pk))) is not None]
    _archive(batch, result, sources)
    for delivery in deliveries:
        result.status[delivery.pk] = delivery.status
    if index:
        _index([d for d in deliveries if d.status == Delivery.Status.ARCHIVED], result)
    elif index_new and result.created:
        _index_new(result)
    return result


def _parsed(
    delivery: Delivery, result: Processed, source: MessageSource | None
) -> tuple[Delivery, ParsedReport] | None:
    """The delivery with its parsed report (or mailbox item, with its
    `source`), if it is to be archived; None when it is done (archived,
    failed for good) or met trouble (recorded in `result`)."""
    if delivery.message_id or delivery.status not in lifecycle.UNFINISHED:
        return None
    try:
        raw = lifecycle.read_verified(delivery)
        if raw is None:
            return None
        if delivery.source == Delivery.Source.MAILBOX:
            if source is None:  # recorded in one transaction with it: never, short of a hand-made row
                raise actions.ParseFailed("mailbox item without its MessageSource row")
            return delivery, actions.parse_item(source, raw)
        return delivery, actions.parse_delivery(delivery, raw)
    except actions.ParseFailed as exc:
        lifecycle.mark_parse_failed(delivery, str(exc))
    except retryable() as exc:
        result.troubled[delivery.pk] = exc
    except Exception as exc:  # noqa: BLE001 - the report's own failure: recorded
        lifecycle.mark_archive_failed(delivery, exc)
    return None


def _archive(batch: list[tuple[Delivery, ParsedReport]], result: Processed, sources: dict[int, MessageSource]) -> None:
    try:
        archived = actions.archive_batch(batch, sources)
        result.archived += archived.count
        result.created += archived.created
        result.merged += archived.merged
        return
    except retryable() as exc:
        for delivery, _ in batch:
            result.troubled[delivery.pk] = exc
        return
    except Exception as exc:  # noqa: BLE001 - BatchConflict, or one report's bad value: one by one
        if len(batch) == 1:
            lifecycle.mark_archive_failed(batch[0][0], exc)
            return
        if not isinstance(exc, actions.BatchConflict):
            log.warning("a batch of %d deliveries failed (%s); archiving them one by one", len(batch), exc)
    for item in batch:
        _archive([item], result, sources)


def _index(deliveries: list[Delivery], result: Processed) -> None:
    """Index the archived deliveries' messages; on our trouble they stay
    waiting (for `index_pending`), their deliveries in `troubled`."""
    try:
        actions.index_messages_of(deliveries)
    except retryable() as exc:
        result.troubled.update((delivery.pk, exc) for delivery in deliveries)


def _index_new(result: Processed) -> None:
    """Index the messages the run created; on our trouble they stay pending
    (for `index_pending`: the archiving itself is done and is not retried)."""
    try:
        result.indexed = actions.index_new(result.created)
    except retryable() as exc:
        log.warning("indexing %d new messages failed (%s); left to index_pending", len(result.created), exc)
