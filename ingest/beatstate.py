"""What beat knows of its periodic tasks, kept in the database.

Celery's beat keeps when it last sent each task in a schedule file.  A
beat whose file is gone (a new pod: the chart's beat has no persistent
volume, and every upgrade recreates it) starts each task's clock again,
so a daily task (retention, the audit log's daily root, the storage scrub,
billing) ran a day after the last restart: with a deploy a day, never.
Here each task's last send, its count and whether a send is owed (the
broker refused it) are rows of the region's database, which is backed up
and shared by whatever pod runs beat next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import close_old_connections, connection, models


class BeatEntry(models.Model):
    """One periodic task, as beat last saved it."""

    name = models.CharField(max_length=200, unique=True)
    last_run_at = models.DateTimeField()
    total_run_count = models.PositiveBigIntegerField(default=0)
    owed = models.BooleanField(default=False, help_text="the broker refused its last send: send it at once")

    class Meta:
        app_label = "ingest"

    def __str__(self) -> str:
        return f"{self.name}: last sent {self.last_run_at:%Y-%m-%d %H:%M:%S}{' (owed)' if self.owed else ''}"


@dataclass(frozen=True)
class EntryState:
    last_run_at: datetime
    total_run_count: int
    owed: bool


def load_beat_state() -> dict[str, EntryState]:
    """Every saved entry, by name."""
    _fresh_connection()
    return {row.name: EntryState(row.last_run_at, row.total_run_count, row.owed) for row in BeatEntry.objects.all()}


def save_beat_state(changed: dict[str, EntryState]) -> None:
    """Write these entries, in one statement (all or none)."""
    _fresh_connection()
    BeatEntry.objects.bulk_create(
        [BeatEntry(name=name, **asdict(state)) for name, state in changed.items()],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["last_run_at", "total_run_count", "owed"],
    )


def _fresh_connection() -> None:
    """Drop a connection the database broke since the last use (beat lives
    for weeks; CONN_MAX_AGE keeps connections), unless a transaction holds it."""
    if not connection.in_atomic_block:
        close_old_connections()
