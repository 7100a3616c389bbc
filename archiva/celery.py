"""The Celery application: configured from Django settings (CELERY_*)."""

import logging
import os

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")

app = Celery("archiva")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _add_heartbeat() -> None:
    """The heartbeat file of `manage.py worker_health`, written while the consumer runs."""
    from archive.heartbeat import Heartbeat

    app.steps["consumer"].add(Heartbeat)


def _make_broker_folders() -> None:
    """The filesystem broker (embedded default) needs its folders to exist."""
    from pathlib import Path

    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key])).mkdir(parents=True, exist_ok=True)


@app.on_after_configure.connect
def _prepare(sender, **kwargs):
    _make_broker_folders()
    _add_heartbeat()


DAY = 24 * 3600


def periodic_tasks(settings) -> list[tuple[float, str, str]]:
    """The beat's schedule: (every how many seconds, task, what it is for)."""
    sweep = settings.ARCHIVA_SWEEP_INTERVAL
    return [
        (sweep, "archive.tasks.sweep_stranded", "sweep stranded deliveries"),
        (sweep, "ingest.held.tend_held_mail", "deliver, release and expire held mail"),
        (
            3600,
            "compliance.tasks.tend_exports",
            "expire exports after 7 days; publish again builds and imports the broker lost",
        ),
        (sweep, "m365.tasks.sweep_notifications", "process Graph notifications a broker fault left behind"),
        # Subscriptions live ~70 hours and are renewed in their last 24: many chances.
        (3600, "m365.tasks.maintain_subscriptions", "create, renew and remove Graph subscriptions"),
        (
            settings.ARCHIVA_M365_ITEMS_INTERVAL,
            "m365.tasks.sync_calendars_and_contacts",
            "archive changed Microsoft 365 events and contacts",
        ),
        (DAY, "m365.tasks.sync_directories", "Microsoft 365 daily test: organization, domains, mailboxes and aliases"),
        (sweep, "m365.tasks.resume_stale_imports", "go on with Microsoft 365 imports whose worker died"),
        (DAY, "compliance.tasks.apply_retention", "retention: delete expired messages no legal hold covers"),
        (sweep, "tenants.tasks.link_audit_events", "audit log: link events a crash left out of their chain"),
        (DAY, "tenants.tasks.audit_daily", "audit log: the day's root of each hash chain, and its verification"),
        (DAY, "compliance.tasks.scrub_storage", "storage integrity scrub: the day's slice of every bucket"),
        (DAY, "billing.tasks.sync_billing", "billing: subscription quantity to the mailbox count, read-only notices"),
    ]


@app.on_after_finalize.connect
def _schedule(sender, **kwargs):
    from django.conf import settings

    for every, task, name in periodic_tasks(settings):
        sender.add_periodic_task(every, sender.signature(task), name=name)


class SweepOnConnect(bootsteps.StartStopStep):
    """Each time the worker's consumer connects to the broker, ask for the
    sweeps (run by one of this worker's own processes), not at the first
    periodic one: at the worker's start, the deliveries a crashed ingest or
    worker left, the imports a crashed worker was running and the Graph
    notifications a broker fault left; after a lost connection (a broker
    restart, which may have lost the queued tasks: a Redis without
    persistence loses them all), also the deliveries and notifications
    published before it."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.connections = 0

    def start(self, parent) -> None:
        self.connections += 1
        again = self.connections > 1
        sweep: dict[str, object] = {"at_start": True}
        if again:
            from django.utils import timezone

            sweep["published_before"] = timezone.now().isoformat()
            logging.getLogger(__name__).info("broker connection back: sweeping what its restart may have lost")
        from ingest.delivery import publish  # counts a failed publish

        try:
            publish("archive.tasks.sweep_stranded", kwargs=sweep)
            # Imports a crashed worker was running go on once their heartbeat is stale.
            publish("m365.tasks.resume_stale_imports")
            publish("m365.tasks.sweep_notifications", kwargs=sweep)
        except Exception:  # the broker went away again: the periodic sweep will do it
            logging.getLogger(__name__).warning("could not ask for the start-up sweep", exc_info=True)


app.steps["consumer"].add(SweepOnConnect)
