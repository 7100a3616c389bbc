"""`manage.py smtpd`: the SMTP ingest, in the foreground."""

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ingest.server import IngestServer


class Command(BaseCommand):
    help = "Run the SMTP ingest (journal reports over SMTP+STARTTLS)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.ARCHIVA_SMTP_HOST)
        parser.add_argument("--port", type=int, default=settings.ARCHIVA_SMTP_PORT)
        parser.add_argument("--workers", type=int, default=16, help="threads for storage and database I/O")

    def handle(self, *args, host, port, workers, **options):
        if not 0 <= port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port")
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        server = IngestServer(host, port, workers=workers)
        try:
            asyncio.run(server.serve_forever())
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.stdout.write("SMTP ingest stopped")
