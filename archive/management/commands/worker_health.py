"""`manage.py worker_health`: is this host's Celery worker alive and taking tasks?

The liveness probe of a worker container.  By default it reads the
heartbeat file the worker refreshes while it is connected to the broker
(archive.heartbeat) and fails when the file is missing or older than
--max-age.  With --ping it also asks the worker itself through the broker
(Celery's remote-control ping to the named node) and fails when no answer
comes within --timeout.  Exit status 0 when healthy, 1 with a message on
standard error when not.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.heartbeat import heartbeat_path, read_heartbeat


class Command(BaseCommand):
    help = "Exit 0 if the Celery worker's heartbeat is fresh (and, with --ping, it answers through the broker)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--file", type=Path, default=None, help="heartbeat file (default ARCHIVA_WORKER_HEARTBEAT_PATH)"
        )
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="seconds a heartbeat stays fresh (default: 3 x ARCHIVA_WORKER_HEARTBEAT_INTERVAL)",
        )
        parser.add_argument(
            "--ping",
            nargs="?",
            const=f"celery@{socket.gethostname()}",
            default=None,
            metavar="NODE",
            help="also ping the worker through the broker (default node: celery@<this host>)",
        )
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ping's answer")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"] or heartbeat_path()
        max_age: float = options["max_age"] or 3 * settings.ARCHIVA_WORKER_HEARTBEAT_INTERVAL
        if max_age <= 0 or options["timeout"] <= 0:
            raise CommandError("--max-age and --timeout must be positive")
        age = self._heartbeat_age(path)
        if age > max_age:
            raise CommandError(f"worker heartbeat {path} is stale: {age:.0f} s old (limit {max_age:.0f} s)")
        message = f"worker heartbeat {age:.1f} s old"
        if options["ping"]:
            self._ping(options["ping"], options["timeout"])
            message += f"; {options['ping']} answered the ping"
        self.stdout.write(message)

    def _heartbeat_age(self, path: Path) -> float:
        try:
            beat = read_heartbeat(path)
        except FileNotFoundError as exc:
            raise CommandError(f"no worker heartbeat at {path}: is the worker running?") from exc
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the worker heartbeat {path}: {exc}") from exc
        return max(0.0, time.time() - float(beat["time"]))

    def _ping(self, node: str, timeout: float) -> None:
        # The Celery app configured from these settings (archiva/__init__.py loads it).
        from celery import current_app

        try:
            replies = current_app.control.ping(destination=[node], timeout=timeout)
        except Exception as exc:
            raise CommandError(f"cannot reach the broker to ping {node}: {exc}") from exc
        if not any(node in reply and reply[node].get("ok") == "pong" for reply in replies):
            raise CommandError(f"worker {node} did not answer a ping through the broker within {timeout:g} s")
