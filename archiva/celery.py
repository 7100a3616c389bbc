"""The Celery application: configured from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")

app = Celery("archiva")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        settings.ARCHIVA_SWEEP_INTERVAL,
        sender.signature("ingest.tasks.sweep_stranded"),
        name="sweep stranded deliveries",
    )
