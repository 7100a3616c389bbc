"""Beat's scheduler: a due task the broker refused is counted and sent again soon.

Celery's own scheduler logs a failed publish ("Message Error") and moves
on: the entry was already advanced, so it next runs one whole interval
later.  For the sweeps (every ARCHIVA_SWEEP_INTERVAL) that costs a minute;
for the daily tasks (retention, the audit log's daily root, the storage
scrub, billing) a broker blip at the wrong second cost a day, and nothing
showed it.  Here a failed publish is counted under the task's name
(`archiva_broker_publish_failures` on /metrics, as the ingest's and the
workers' are) and sent again every ARCHIVA_SWEEP_INTERVAL until the broker
takes it; the entry's own schedule is left as Celery keeps it.

What is owed is kept beside the schedule file (`<schedule>.failed.json`):
a beat restarted while the broker is down sends it at its first tick,
where Celery, having advanced the entry, would wait for its next due time.

Chosen by CELERY_BEAT_SCHEDULER, so every `celery beat` (make run, the
Compose file, the Helm chart) uses it without a flag.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from django.conf import settings

log = logging.getLogger(__name__)


class Scheduler(PersistentScheduler):
    """PersistentScheduler whose failed publishes are counted and retried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Entries whose last publish failed, by name: (when to send again, the entry).
        self.failed: dict[str, tuple[float, ScheduleEntry]] = {}
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        for name in self._owed():  # what the previous beat could not send: at the first tick
            if name in self.schedule:
                self.failed[name] = (0.0, self.schedule[name])

    def _owed_path(self) -> Path | None:
        return Path(f"{self.schedule_filename}.failed.json") if self.schedule_filename else None

    def _owed(self) -> list[str]:
        path = self._owed_path()
        try:
            names = json.loads(path.read_text()) if path else []
        except (OSError, ValueError):  # none yet, or unreadable: nothing is owed
            return []
        return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []

    def _note_owed(self) -> None:
        path = self._owed_path()
        if path is None:
            return
        try:
            path.write_text(json.dumps(sorted(self.failed)))
        except OSError:
            log.warning("could not note the tasks beat owes in %s", path, exc_info=True)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        log.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        self.send(entry, producer)

    def send(self, entry: ScheduleEntry, producer: Any = None) -> bool:
        """Publish `entry` now (not advancing its schedule); on failure count
        it and note it for a retry.  True when the broker took it."""
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception:
            from ingest.stats import count_publish_failure  # Django is set up by now

            count_publish_failure(entry.task)
            retry = settings.ARCHIVA_SWEEP_INTERVAL
            again = entry.name in self.failed  # its traceback was logged the first time
            self.failed[entry.name] = (time.monotonic() + retry, entry)
            if not again:
                self._note_owed()
            log.error(
                "could not publish %s (%s)%s; sending it again in %s s",
                entry.name,
                entry.task,
                " again" if again else "",
                retry,
                exc_info=not again,
            )
            return False
        if self.failed.pop(entry.name, None) is not None:
            self._note_owed()
            log.info("published %s (%s) after a failed attempt", entry.name, entry.task)
        return True

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send again the failed entries whose retry is due, then Celery's
        tick; sleep no longer than the next retry."""
        now = time.monotonic()
        for due, entry in list(self.failed.values()):
            if due <= now:
                self.send(entry, self.producer)
        wait = super().tick(*args, **kwargs)
        if self.failed:
            soonest = min(due for due, _ in self.failed.values())
            wait = min(wait, max(soonest - time.monotonic(), 0.0))
        return wait
