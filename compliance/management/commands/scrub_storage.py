"""`manage.py scrub_storage [--tenant <public id or name>] [--all]`: check stored objects against their SHA-256.

Without `--all`, each tenant's share for the time since its last run (as the
daily task does); with `--all`, every object now.  Prints what was checked and
each bad object, and exits non-zero when there are any.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance import scrub
from regions.current import current_region
from tenants import access


class Command(BaseCommand):
    help = "Re-read stored objects and check them against the SHA-256 the database holds; exit 1 on bad ones."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="the tenant's public id (UUID) or exact name (default: every tenant)")
        parser.add_argument("--all", action="store_true", help="check every object now, not this run's slice")

    def handle(self, *args: Any, tenant: str | None, all: bool, **options: Any) -> None:  # noqa: A002  # the option's name
        if tenant:
            try:
                tenants = [access.tenant_by_reference(tenant)]
            except LookupError as exc:
                raise CommandError(str(exc)) from None
        else:
            tenants = list(access.tenants_of_region(current_region().code))
        bad = 0
        for row in tenants:
            result = scrub.scrub_tenant(row, whole=all)
            cycle = ", cycle complete" if result.cycle_completed else ""
            self.stdout.write(f"{row.name} ({row.public_id}): {result.checked} objects checked{cycle}")
            for finding in result.problems:
                self.stdout.write(f"  {finding.get_problem_display()}: {finding.key} ({finding.error})")
            bad += len(result.problems)
        if bad:
            raise CommandError(f"{bad} bad object(s) found", returncode=1)
