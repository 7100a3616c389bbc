"""`manage.py retry_failed [--tenant …] [--verification]`: read failed reports again.

Run after fixing the parser (or restoring the store): each report that
failed is put back in line and processed here and now, and the command
says how each one ended.  Reports that hit trouble of ours (storage,
search) are handed to the workers, which retry with backoff.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive import access as archive_access
from archive.processing import Processed, process_deliveries
from ingest import delivery as lifecycle
from ingest.models import Delivery
from tenants import access


class Command(BaseCommand):
    help = "Retry journal reports that could not be parsed (and, with --verification, verified)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="only this tenant (public id or exact name); default: all")
        parser.add_argument(
            "--verification", action="store_true", help="also re-verify reports whose stored bytes did not match"
        )

    def handle(self, *args: Any, tenant: str | None, verification: bool, **options: Any) -> None:
        try:
            tenant_row = access.tenant_by_reference(tenant) if tenant else None
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        statuses = [Delivery.Status.PARSE_FAILED] + ([Delivery.Status.FAILED] if verification else [])
        failed = list(archive_access.failed_deliveries(tenant_row, statuses))
        if not failed:
            self.stdout.write("Nothing to retry.")
            return
        lifecycle.requeue_failures(failed)
        ids = [delivery.pk for delivery in failed]
        result = Processed()
        for start in range(0, len(ids), lifecycle.PUBLISH_CHUNK):  # a worker's batch at a time
            chunk = process_deliveries(ids[start : start + lifecycle.PUBLISH_CHUNK], index=True)
            result.status.update(chunk.status)
            result.troubled.update(chunk.troubled)
        outcomes: dict[str, int] = {}
        for delivery in failed:
            if delivery.pk in result.troubled:
                self.stderr.write(f"{delivery.queue_id}: {result.troubled[delivery.pk]}; left to the workers")
                outcome = "handed to the workers"
            else:
                outcome = result.status[delivery.pk]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if result.troubled:
            lifecycle.enqueue(list(result.troubled))
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.stdout.write(f"Retried {len(failed)} reports: {summary}.")
