"""Beat's scheduler: its state in the database, and a due task the broker
refused counted and sent again soon.

Celery's PersistentScheduler keeps each entry's last send in a schedule
file.  The chart's beat has no persistent volume and every upgrade
recreates its pod, so each new beat started every clock again: a daily
task (retention, the audit log's daily root, the storage scrub, billing)
ran a day after the last restart, and with a deploy a day never.  Here
the entries' state lives in the region's database (ingest.beatstate),
saved as soon as a long-period entry is sent and otherwise every
`sync_every` (3 minutes), so whatever beat runs next carries on.  A schedule
file an earlier version kept (`--schedule`) is read once, for the entries
the database does not have yet.

Celery's scheduler also logs a failed publish ("Message Error") and moves
on: the entry was already advanced, so it next ran one whole interval
later.  Here a failed publish is counted under the task's name
(`archiva_broker_publish_failures` on /metrics, as the ingest's and the
workers' are) and sent again every ARCHIVA_SWEEP_INTERVAL until the broker
takes it; the entry's own schedule is left as Celery keeps it.  What is
owed is saved with the entry at once: a beat restarted while the broker is
down, anywhere, sends it at its first tick.

Chosen by CELERY_BEAT_SCHEDULER, so every `celery beat` (make run, the
Compose file, the Helm chart) uses it without a flag.
"""

from __future__ import annotations

import logging
import shelve
import time
from datetime import timedelta
from typing import Any

from celery.beat import ScheduleEntry
from celery.beat import Scheduler as CeleryScheduler
from django.conf import settings

from ingest.beatstate import EntryState, load_beat_state, save_beat_state

log = logging.getLogger(__name__)


class Scheduler(CeleryScheduler):
    """Celery's scheduler with its state in the database, whose failed
    publishes are counted and retried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.schedule_filename: str | None = kwargs.get("schedule_filename")
        # Entries whose last publish failed, by name: (when to send again, the entry).
        self.failed: dict[str, tuple[float, ScheduleEntry]] = {}
        self._saved: dict[str, EntryState] = {}  # as the database has them
        self._sync_failing = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        try:
            saved = load_beat_state()
        except Exception:
            log.error("beat cannot read its schedule's state from the database", exc_info=True)
            raise
        earlier = {} if saved.keys() >= self.schedule.keys() else self._schedule_file()
        for name, entry in self.schedule.items():
            if (state := saved.get(name)) is not None:
                entry.last_run_at, entry.total_run_count = state.last_run_at, state.total_run_count
                if state.owed:  # what the previous beat could not send: at the first tick
                    self.failed[name] = (0.0, entry)
            elif (kept := earlier.get(name)) is not None:
                entry.last_run_at, entry.total_run_count = kept.last_run_at, kept.total_run_count
        self._saved = saved
        self.sync()

    def _schedule_file(self) -> dict[str, ScheduleEntry]:
        """The entries a PersistentScheduler (an earlier version) kept in the
        schedule file, if there is one."""
        if not self.schedule_filename:
            return {}
        try:
            with shelve.open(self.schedule_filename, flag="r") as store:  # noqa: S301 (beat's own file, as Celery reads it)
                entries = dict(store.get("entries", {}))
        except Exception:  # none (dbm.error), or not readable: start as Celery would
            return {}
        log.info("beat took the last runs of %d entries from %s", len(entries), self.schedule_filename)
        return {name: e for name, e in entries.items() if isinstance(e, ScheduleEntry)}

    def _state(self) -> dict[str, EntryState]:
        return {
            name: EntryState(entry.last_run_at, entry.total_run_count, name in self.failed)
            for name, entry in self.schedule.items()
        }

    def sync(self) -> None:
        """Save the entries that changed since the last save.  A database that
        is away is logged (once) and the save tried again at the next sync."""
        changed = {name: state for name, state in self._state().items() if self._saved.get(name) != state}
        if not changed:
            return
        try:
            save_beat_state(changed)
        except Exception:
            log.warning("could not save beat's schedule to the database; trying again", exc_info=not self._sync_failing)
            self._sync_failing = True
            return
        if self._sync_failing:
            log.info("beat's schedule saved again")
        self._sync_failing = False
        self._saved.update(changed)

    @property
    def info(self) -> str:
        return "    . db -> the database (ingest.BeatEntry)"

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
                self._do_sync()
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
            self._do_sync()
            log.info("published %s (%s) after a failed attempt", entry.name, entry.task)
        elif _period(entry) > self.sync_every:  # a restart must not send it again
            self._do_sync()
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


def _period(entry: ScheduleEntry) -> float:
    """Seconds between two sends of `entry` (an interval's; a day for a crontab and the like)."""
    every = getattr(entry.schedule, "run_every", None)
    return every.total_seconds() if isinstance(every, timedelta) else 24 * 3600.0
