"""`manage.py m365_import --tenant <name, public id or id> [--mailboxes a,b] [--since YYYY-MM-DD] [--status]`.

Starts a historical import from Microsoft 365 and runs it in this process
with a progress bar (the workers archive and index what it stores, as for
any import); `--status` only shows where the tenant's latest import stands,
`--resume` runs an import already in progress here (one a worker lost, or a
paused one).  Ctrl-C stops it after the batch in hand; the workers, or
`--resume`, go on from there.
"""

from __future__ import annotations

import threading
import time
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connections

from m365 import import_actions, importer
from m365.import_actions import ImportRefused, Progress, latest_import, progress, start_import
from m365.importing import ImportRun
from tenants.models import Tenant


class Bar:
    """One line rewritten in place: `[######------] 3/10 mailboxes  12,345 messages  210/s  about 4 minutes left`."""

    WIDTH = 30

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def show(self, p: Progress) -> None:
        filled = self.WIDTH * p.percent // 100
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        finished = p.mailboxes_done + p.mailboxes_failed
        left = f"  {p.eta_text} left" if p.active and p.eta_seconds is not None else ""
        errors = f"  {p.mailboxes_failed} with errors" if p.mailboxes_failed else ""
        line = (
            f"\r[{bar}] {finished}/{p.mailboxes_total} mailboxes  {p.messages_imported:,} messages"
            f"  {p.rate:.0f}/s{left}{errors}  "
        )
        self.out.write(line, ending="")
        self.out.flush()


def tenant_for(reference: str) -> Tenant:
    try:
        return import_actions.find_tenant(reference)
    except LookupError as exc:
        raise CommandError(f"--tenant: {exc}") from None


def parse_since(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since: {value!r} is not a date as YYYY-MM-DD") from None


class Command(BaseCommand):
    help = "Import a tenant's Microsoft 365 mailboxes (mail, folders, calendars, contacts) with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's exact name, public id (UUID) or id")
        parser.add_argument("--mailboxes", help="comma-separated mailbox addresses (default: all mailboxes)")
        parser.add_argument("--since", help="only mail received on or after this day, YYYY-MM-DD (UTC)")
        parser.add_argument("--status", action="store_true", help="show the latest import's progress and exit")
        parser.add_argument("--resume", action="store_true", help="run the import in progress here")

    def handle(self, *args: Any, tenant: str, status: bool, resume: bool, **options: Any) -> None:
        tenant_row = tenant_for(tenant)
        if status:
            self._status(tenant_row)
            return
        run = self._resumable(tenant_row) if resume else self._start(tenant_row, options)
        self.stdout.write(f"Importing {run.mailboxes.count()} mailboxes of {tenant_row.name} (import {run.pk}).")
        self._run(run)

    def _status(self, tenant: Tenant) -> None:
        p = progress(latest_import(tenant))
        if p.state == "none":
            self.stdout.write(f"{tenant.name} has no import yet.")
            return
        self.stdout.write(
            f"Import {p.run_id}: {p.state}; {p.mailboxes_done} of {p.mailboxes_total} mailboxes done, "
            f"{p.mailboxes_failed} failed; {p.messages_imported:,} messages and {p.items_imported:,} events "
            f"and contacts imported; {p.rate:.1f} messages/s"
            + (f"; {p.eta_text} left" if p.active and p.eta_seconds is not None else "")
        )
        for error in p.errors:
            self.stdout.write(f"  {error['mailbox']}: {error['reason']}")
        if p.error:
            self.stdout.write(f"  {p.error}")

    def _start(self, tenant: Tenant, options: dict[str, Any]) -> ImportRun:
        mailboxes: str | list[str] = "all"
        if options.get("mailboxes"):
            mailboxes = [a.strip() for a in options["mailboxes"].split(",") if a.strip()]
        try:
            return start_import(tenant, mailboxes, parse_since(options.get("since")), publish=False)
        except ImportRefused as refused:
            hint = " (see --status; --resume runs it here)" if isinstance(refused, import_actions.ImportActive) else ""
            raise CommandError(f"{refused}{hint}") from None

    def _resumable(self, tenant: Tenant) -> ImportRun:
        run = latest_import(tenant)
        if run is None or run.state not in ImportRun.ACTIVE:
            raise CommandError(f"{tenant.name} has no import in progress to resume")
        import_actions.resume_import(tenant, run, publish=False)  # a paused one: queued again, run here
        return run

    def _run(self, run: ImportRun) -> None:
        bar = Bar(self.stdout)
        done = threading.Event()

        def show_while_running() -> None:
            try:
                watched = import_actions.import_by_id(run.tenant, run.pk)  # this thread's own copy
                while not done.wait(1.0):
                    watched.refresh_from_db()
                    bar.show(progress(watched))
            finally:
                connections.close_all()  # this thread's own connection

        shower = threading.Thread(target=show_while_running, daemon=True)
        shower.start()
        try:
            while True:
                outcome = importer.run_slice(run.pk)
                if outcome is True:
                    break
                if outcome is None:  # a worker has it (or it was paused): watch it
                    run.refresh_from_db()
                    if run.state not in (ImportRun.State.QUEUED, ImportRun.State.RUNNING):
                        break
                    time.sleep(2)
        except KeyboardInterrupt:
            done.set()
            raise CommandError("interrupted: the workers go on with it shortly, or run again with --resume") from None
        finally:
            done.set()
            shower.join()
        run.refresh_from_db()
        final = progress(run)
        bar.show(final)
        self.stdout.write("")
        self._status(run.tenant)
        if final.state == ImportRun.State.FAILED:
            raise CommandError(final.error or "the import failed")
