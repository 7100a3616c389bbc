"""The worker's heartbeat file, for `manage.py worker_health` (a liveness probe).

A consumer bootstep writes the file every ARCHIVA_WORKER_HEARTBEAT_INTERVAL seconds
while the worker's consumer runs.  Celery stops the consumer's steps when
the broker connection is lost and starts them again once it is back, so the
file stops being refreshed while the worker cannot take tasks, as it does
when the worker's main process hangs.  The file names the worker (its node
name and pid), and is removed when the worker shuts down cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from celery import bootsteps
from django.conf import settings

log = logging.getLogger(__name__)


def heartbeat_path() -> Path:
    return Path(settings.ARCHIVA_WORKER_HEARTBEAT_PATH)


def write_heartbeat(path: Path, hostname: str) -> None:
    """Replace the file atomically, so a probe never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"hostname": hostname, "pid": os.getpid(), "time": time.time()})
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(body)
    partial.replace(path)


def read_heartbeat(path: Path) -> dict[str, Any]:
    """The last heartbeat; raises OSError (missing file) or ValueError (not a heartbeat)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("time"), int | float):
        raise ValueError(f"{path} is not a worker heartbeat")
    return data


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # celery has no type information
    """Started after the consumer subscribed to its queues; stopped when it lost the broker."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.path = heartbeat_path()

    def start(self, parent: Any) -> None:
        self.beat(parent.hostname)
        self.tref = parent.timer.call_repeatedly(
            settings.ARCHIVA_WORKER_HEARTBEAT_INTERVAL, self.beat, (parent.hostname,), priority=10
        )

    def beat(self, hostname: str) -> None:
        try:
            write_heartbeat(self.path, hostname)
        except OSError:
            log.warning("could not write the worker heartbeat %s", self.path, exc_info=True)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        try:
            if read_heartbeat(self.path).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
