"""`manage.py imap_journal`: read every enabled IMAP journal mailbox into the archive.

Runs in the foreground until SIGTERM or Ctrl-C (the `imap` line of the
Procfile); see imapjournal.poller for what it does and why it is safe to
kill at any moment.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imapjournal.poller import SESSION_SECONDS, Poller


class Command(BaseCommand):
    help = "Read the enabled IMAP journal mailboxes (XOAUTH2) into the archive; runs until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--session-seconds",
            type=float,
            default=SESSION_SECONDS,
            help=f"sign in again after this many seconds (default {SESSION_SECONDS})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["session_seconds"] <= 0:
            raise CommandError(f"--session-seconds must be more than 0, not {options['session_seconds']:g}")
        poller = Poller(lifetime=options["session_seconds"])

        def stop(signum: int, frame: FrameType | None) -> None:
            poller.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        poller.run()
