"""`manage.py smtpd`: the SMTP ingest, in the foreground."""

import asyncio
import os
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ingest.server import IngestServer, new_event_loop


def serve(host: str, port: int, reuse_port: bool, index: int = 0) -> None:
    from ingest.metrics import serve_metrics

    if settings.ARCHIVA_METRICS_PORT:
        serve_metrics(settings.ARCHIVA_METRICS_HOST, settings.ARCHIVA_METRICS_PORT + index)
    server = IngestServer(host, port, reuse_port=reuse_port, commit_process=True)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(server.serve_forever())


class Command(BaseCommand):
    help = "Run the SMTP ingest (journal reports over SMTP+STARTTLS)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.ARCHIVA_SMTP_HOST)
        parser.add_argument("--port", type=int, default=settings.ARCHIVA_SMTP_PORT)
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.ARCHIVA_SMTP_PROCESSES,
            help="ingest processes sharing the port (SO_REUSEPORT); default ARCHIVA_SMTP_PROCESSES",
        )

    def handle(self, *args, host, port, processes, **options):
        if not 0 < port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port")
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        try:
            if processes == 1:
                serve(host, port, reuse_port=False)
            else:
                self._run_processes(host, port, processes)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.stdout.write("SMTP ingest stopped")

    def _run_processes(self, host: str, port: int, processes: int) -> None:
        """Fork N ingest processes on one port; SIGTERM/SIGINT stop them all."""
        connections.close_all()  # never share a database connection across fork
        children = []
        for index in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    serve(host, port, reuse_port=True, index=index)
                except BaseException:
                    code = 1
                    raise
                finally:
                    os._exit(code)
            children.append(pid)

        def forward(signum, frame):
            for child in children:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        failed = False
        for child in children:
            _, status = os.waitpid(child, 0)
            failed = failed or os.waitstatus_to_exitcode(status) != 0
        if failed:
            sys.exit(1)
