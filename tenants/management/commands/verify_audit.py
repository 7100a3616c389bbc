"""`manage.py verify_audit [--tenant <public id or name>]`: check the audit log's hash chains.

Prints one line per tenant, intact (with the number of events and the head
hash) or broken (the first event that does not hold: id, time, why), and
exits non-zero when any chain is broken.  The outcome is kept for System Status.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import access, audit


class Command(BaseCommand):
    help = "Verify the audit log's hash chain of one tenant or of all; exit 1 when one is broken."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="the tenant's public id (UUID) or exact name (default: every tenant)")

    def handle(self, *args: Any, tenant: str | None, **options: Any) -> None:
        if tenant:
            try:
                tenants = [access.tenant_by_reference(tenant)]
            except LookupError as exc:
                raise CommandError(str(exc)) from None
        else:
            tenants = audit.tenants_with_chains()
        broken = 0
        for row in tenants:
            verdict = audit.verify_tenant(row)
            if verdict.ok:
                self.stdout.write(
                    f"{row.name} ({row.public_id}): intact, {verdict.events} events, head {verdict.head_hash}"
                )
            else:
                broken += 1
                at = verdict.broken_event_at.isoformat() if verdict.broken_event_at else "?"
                self.stdout.write(
                    f"{row.name} ({row.public_id}): BROKEN at event {verdict.broken_event_id} ({at}): {verdict.reason}"
                )
        if broken:
            raise CommandError(f"{broken} audit chain(s) broken", returncode=1)
