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
from archive.models import MessageSource
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


def process_deliveries(delivery_ids: list[int], *, index: bool = False) -> Processed:
    """Verify, parse and archive these deliveries; with `index`, index their
    messages here and now (tools, tests; workers leave that to `index_pending`).

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
        result.archived += actions.archive_batch(batch, sources)
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
