"""Starting, pausing and resuming a historical import, and reading its progress.

The only writers of `ImportRun` outside the engine; each change is audited
in its own transaction, and the worker is asked for by task name once the
change is committed (a lost publish is made good by `resume_stale`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from ingest.delivery import publish
from m365.importing import ImportMailbox, ImportRun
from tenants.audit import record_event
from tenants.models import ApiToken, Membership, Tenant

log = logging.getLogger(__name__)

RUN_TASK = "m365.tasks.run_import"
STARTED = "m365-import-started"
PAUSED = "m365-import-paused"
RESUMED = "m365-import-resumed"
CANCELLED = "m365-import-cancelled"


class ImportRefused(Exception):
    """The import cannot be started or changed; the message says why, for the person who asked."""


class ImportActive(ImportRefused):
    """Another import of the tenant is queued, running or paused."""


# --- reading -------------------------------------------------------------------


def latest_import(tenant: Tenant) -> ImportRun | None:
    """The tenant's newest import, or None: never another tenant's."""
    return ImportRun.objects.filter(tenant=tenant).order_by("-created_at", "-pk").first()


def import_by_id(tenant: Tenant, run_id: int) -> ImportRun:
    """One of the tenant's imports; ImportRun.DoesNotExist for another tenant's, as for a missing one."""
    return ImportRun.objects.select_related("tenant").get(tenant=tenant, pk=run_id)


def find_tenant(reference: str) -> Tenant:
    """A tenant by id, public id or exact name (operators' commands); LookupError naming the reference."""
    from tenants import access

    if reference.isdigit():
        found = Tenant.objects.filter(pk=int(reference)).first()
        if found is not None:
            return found
    return access.tenant_by_reference(reference)


def importable_mailboxes(tenant: Tenant) -> list[tuple[str, str]]:
    """(address, "Name <address>") of the tenant's mailboxes that Graph says exist, for the page's choice."""
    from m365.models import Mailbox

    rows = Mailbox.objects.filter(tenant=tenant, has_mailbox=True).order_by("primary_address")
    return [(m.primary_address.lower(), f"{m.display_name} <{m.primary_address}>") for m in rows]


def has_imports(tenant: Tenant) -> bool:
    return ImportRun.objects.filter(tenant=tenant).exists()


def import_days(tenant: Tenant, since: date) -> dict[date, int]:
    """Messages imported per day (UTC) from `since`, for Status → Charts."""
    from m365.importing import ImportDay

    rows = ImportDay.objects.filter(tenant=tenant, day__gte=since).values_list("day", "messages")
    return dict(rows)


@dataclass
class Progress:
    state: str
    run_id: int | None = None
    since: date | None = None
    mailboxes_total: int = 0
    mailboxes_done: int = 0
    mailboxes_failed: int = 0
    messages_imported: int = 0
    items_imported: int = 0
    messages_expected: int = 0
    rate: float = 0.0  # messages per second while running
    eta_seconds: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ImportRun.ACTIVE

    @property
    def percent(self) -> int:
        """How far, as a whole percentage for the bar: by messages against what Graph counts in the
        folders listed so far, or by mailboxes finished, whichever says more; 100 only when finished."""
        if self.state in (ImportRun.State.DONE, ImportRun.State.FAILED):
            return 100
        by_mailboxes = (
            (self.mailboxes_done + self.mailboxes_failed) / self.mailboxes_total if self.mailboxes_total else 0
        )
        by_messages = self.messages_imported / self.messages_expected if self.messages_expected else 0
        return min(99, int(100 * max(by_mailboxes, by_messages)))

    @property
    def eta_text(self) -> str:
        return duration_text(self.eta_seconds) if self.eta_seconds is not None else "unknown yet"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "state": self.state,
            "since": self.since.isoformat() if self.since else None,
            "percent": self.percent,
            "mailboxes_total": self.mailboxes_total,
            "mailboxes_done": self.mailboxes_done,
            "mailboxes_failed": self.mailboxes_failed,
            "messages_imported": self.messages_imported,
            "items_imported": self.items_imported,
            "rate": round(self.rate, 1),
            "eta_seconds": round(self.eta_seconds) if self.eta_seconds is not None else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
            "errors": self.errors,
        }


def duration_text(seconds: float) -> str:
    """ "under a minute", "about 12 minutes", "about 3 hours": an estimate, said as one."""
    if seconds < 60:
        return "under a minute"
    if seconds < 5400:
        minutes = round(seconds / 60)
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    hours = round(seconds / 3600)
    return f"about {hours} hours" if hours < 48 else f"about {round(hours / 24)} days"


def progress(run: ImportRun | None) -> Progress:
    """Where the import stands: counts, rate, estimate of time left, and each mailbox's error."""
    if run is None:
        return Progress(state="none")
    counts = run.mailboxes.aggregate(
        total=Count("pk"),
        done=Count("pk", filter=Q(state=ImportMailbox.State.DONE)),
        failed=Count("pk", filter=Q(state=ImportMailbox.State.FAILED)),
        expected=Sum("messages_expected"),
    )
    result = Progress(
        state=run.state,
        run_id=run.pk,
        since=run.since,
        mailboxes_total=counts["total"],
        mailboxes_done=counts["done"],
        mailboxes_failed=counts["failed"],
        messages_imported=run.messages_imported,
        items_imported=run.items_imported,
        messages_expected=counts["expected"] or 0,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        errors=[
            {"mailbox": address, "reason": reason}
            for address, reason in run.mailboxes.filter(state=ImportMailbox.State.FAILED)
            .order_by("address")
            .values_list("address", "error")
        ],
    )
    _rate_and_eta(result, run)
    return result


def _rate_and_eta(result: Progress, run: ImportRun) -> None:
    elapsed = run.active_seconds
    if run.state == ImportRun.State.RUNNING and run.slice_started_at:
        # The running slice adds its time only when it ends; until then, count from its claim.
        elapsed += max(0.0, (timezone.now() - run.slice_started_at).total_seconds())
    if elapsed <= 0 or not run.messages_imported:
        return
    result.rate = run.messages_imported / elapsed
    left = max(0, result.messages_expected - run.messages_imported)
    if result.active and result.messages_expected:
        result.eta_seconds = left / result.rate if result.rate else None


# --- changing ------------------------------------------------------------------


def start_import(
    tenant: Tenant,
    mailboxes: str | list[str],
    since: date | None = None,
    *,
    actor: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
    publish: bool = True,
) -> ImportRun:
    """Record an import of "all" the tenant's mailboxes or of the listed addresses, from `since`; the worker runs it.

    Refused (ImportRefused) without a connection, while another import is
    active, for an address that is not one of the tenant's mailboxes, and
    for a start date in the future.  Audited when a person (`actor`) asked;
    `publish=False` leaves it to the caller to run (`manage.py m365_import`)."""
    _require_connection(tenant)
    if since is not None and since > timezone.now().date():
        raise ImportRefused(f"the start date {since.isoformat()} is in the future")
    chosen = _chosen_mailboxes(tenant, mailboxes)
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one start at a time per tenant
        if ImportRun.objects.filter(tenant=tenant, state__in=ImportRun.ACTIVE).exists():
            raise ImportActive(
                "an import is already in progress (queued, running or paused): wait until it is done, or cancel it"
            )
        run = ImportRun.objects.create(
            tenant=tenant, requested_by=actor.user if actor else None, all_mailboxes=mailboxes == "all", since=since
        )
        ImportMailbox.objects.bulk_create(
            ImportMailbox(run=run, address=address, user_id=user_id) for address, user_id in chosen
        )
        if actor is not None:
            record_event(
                actor,
                STARTED,
                {
                    "import": run.pk,
                    "mailboxes": "all" if run.all_mailboxes else [a for a, _ in chosen],
                    "since": since.isoformat() if since else None,
                },
                ip=ip,
                token=token,
                target=f"{len(chosen)} mailboxes",
            )
        if publish:
            transaction.on_commit(lambda: publish_run(run.pk))
    return run


def _require_connection(tenant: Tenant) -> None:
    from m365.models import Connection

    connection = Connection.objects.filter(tenant=tenant).first()
    if connection is None or not connection.is_configured:
        raise ImportRefused("Microsoft 365 is not connected: set up the connection (and test it) first")


def _chosen_mailboxes(tenant: Tenant, wanted: str | list[str]) -> list[tuple[str, str]]:
    """(address, Graph user id) of each mailbox to import; every listed address must be the tenant's.

    A mailbox is named by its primary address, or its user principal name when Graph listed no
    address; a listed address may also be one of its proxy addresses (an alias)."""
    from m365.models import Mailbox

    rows = list(
        Mailbox.objects.filter(tenant=tenant).values_list(
            "primary_address", "user_principal_name", "proxy_addresses", "graph_id", "has_mailbox"
        )
    )
    primary = {graph_id: (address or upn).lower() for address, upn, _, graph_id, _ in rows}
    known: dict[str, str] = {}
    for address, upn, proxies, graph_id, _ in rows:
        for name in [*(proxies or []), upn, address]:
            if name:
                known[str(name).lower()] = graph_id
    if wanted == "all":
        chosen = sorted((primary[graph_id], graph_id) for *_, graph_id, has_mailbox in rows if has_mailbox)
        if not chosen:
            raise ImportRefused("no mailboxes are known yet: synchronize the mailbox list first")
        return chosen
    if not isinstance(wanted, list) or not wanted or not all(isinstance(a, str) for a in wanted):
        raise ImportRefused('mailboxes must be "all" or a non-empty list of addresses')
    addresses = sorted({a.strip().lower() for a in wanted})
    unknown = [a for a in addresses if a not in known]
    if unknown:
        raise ImportRefused(f"not a mailbox of this organization: {', '.join(unknown[:10])}")
    return sorted({(primary[known[a]], known[a]) for a in addresses})


def pause_import(
    tenant: Tenant,
    run: ImportRun,
    *,
    actor: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> bool:
    """Stop the import after the batch in hand (the worker notices within seconds); False if it was not active."""
    with transaction.atomic():
        changed = ImportRun.objects.filter(
            pk=run.pk, tenant=tenant, state__in=[ImportRun.State.QUEUED, ImportRun.State.RUNNING]
        ).update(state=ImportRun.State.PAUSED)
        if changed and actor is not None:
            record_event(actor, PAUSED, {"import": run.pk}, ip=ip, token=token, target=f"import {run.pk}")
    return bool(changed)


def resume_import(
    tenant: Tenant,
    run: ImportRun,
    *,
    actor: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
    publish: bool = True,
) -> bool:
    """Go on with a paused import where it stopped; False if it was not paused."""
    with transaction.atomic():
        changed = ImportRun.objects.filter(pk=run.pk, tenant=tenant, state=ImportRun.State.PAUSED).update(
            state=ImportRun.State.QUEUED, heartbeat_at=None
        )
        if changed and actor is not None:
            record_event(actor, RESUMED, {"import": run.pk}, ip=ip, token=token, target=f"import {run.pk}")
        if changed and publish:
            transaction.on_commit(lambda: publish_run(run.pk))
    return bool(changed)


def cancel_import(
    tenant: Tenant,
    run: ImportRun,
    *,
    actor: Membership | None = None,
    ip: str | None = None,
    token: ApiToken | None = None,
) -> bool:
    """End an import for good (what it stored stays archived); the worker stops after the batch in hand."""
    who = actor.user.email if actor is not None else "an operator"
    with transaction.atomic():
        changed = ImportRun.objects.filter(pk=run.pk, tenant=tenant, state__in=ImportRun.ACTIVE).update(
            state=ImportRun.State.FAILED, error=f"Cancelled by {who}.", finished_at=timezone.now()
        )
        if changed and actor is not None:
            record_event(actor, CANCELLED, {"import": run.pk}, ip=ip, token=token, target=f"import {run.pk}")
    return bool(changed)


def publish_run(run_id: int, countdown: float | None = None) -> bool:
    """Ask a worker to run (or go on with) the import; on broker trouble the periodic `resume_stale` does."""
    try:
        publish(RUN_TASK, (run_id,), countdown=countdown)
    except Exception:
        log.warning("could not publish import %s; the next resume sweep will", run_id, exc_info=True)
        return False
    return True


def resume_stale() -> int:
    """Publish every active import that no worker shows life for, or will not within
    ARCHIVA_M365_IMPORT_STALE (a crashed worker's, or one whose publish was lost):
    the task claims it only once its heartbeat is stale, so asking twice is harmless."""
    stale_after = settings.ARCHIVA_M365_IMPORT_STALE
    now = timezone.now()
    published = 0
    runs = ImportRun.objects.filter(state__in=[ImportRun.State.QUEUED, ImportRun.State.RUNNING])
    for run_id, heartbeat in runs.values_list("pk", "heartbeat_at"):
        wait = 0.0 if heartbeat is None else max(0.0, stale_after + 1 - (now - heartbeat).total_seconds())
        published += publish_run(run_id, countdown=wait or None)
    return published
