"""`manage.py apply_retention [--tenant …] [--dry-run]`: the daily retention run, by hand.

Deletes each tenant's expired messages that no legal hold covers, from the
index, the database and the bucket, with a progress line; `--dry-run`
counts what would go and deletes nothing.  Every run is audited with its counts.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.management.commands.reindex import Progress
from compliance import purge
from regions.current import current_region
from tenants import access
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Delete expired messages that no legal hold covers (retention), in one tenant or all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="the tenant's public id (UUID) or exact name; default: every tenant")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args: Any, tenant: str | None, dry_run: bool, **options: Any) -> None:
        tenants: list[Tenant]
        if tenant:
            try:
                tenants = [access.tenant_by_reference(tenant)]
            except LookupError as exc:
                raise CommandError(str(exc)) from None
        else:
            tenants = list(access.tenants_of_region(current_region().code))
        for row in tenants:
            progress = Progress(self.stdout, 0, f"{'Checking' if dry_run else 'Applying'} retention in {row.name}")

            def show(done: int, total: int, progress: Progress = progress) -> None:
                progress.total = total
                progress.show(done)

            outcome = purge.run(row, dry_run=dry_run, progress=show)
            progress.finish()
            verb = "would delete" if dry_run else "deleted"
            rules = ", ".join(f"{label}: {n}" for label, n in outcome.by_rule.items()) or "nothing expires"
            self.stdout.write(
                f"{row.name}: {outcome.expired} expired, {verb} {outcome.deleted} ({rules}), "
                f"{outcome.held} kept for legal holds, {outcome.waiting} waiting to be indexed"
                + ("" if dry_run else f"; {outcome.objects_deleted} objects deleted")
                + (f", {outcome.objects_locked} still locked (retried next run)" if outcome.objects_locked else "")
            )
