"""`manage.py smtpd`: the SMTP ingest, in the foreground."""

import asyncio
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from infra.logs import cheap_records
from infra.runtime import settle_heap
from ingest.commitd import SharedCommitter
from ingest.server import IngestServer, new_event_loop
from ingest.tuning import RESTART_DELAY

log = logging.getLogger(__name__)


def serve(host: str, port: int, reuse_port: bool, index: int = 0, committer_address: str | None = None) -> None:
    from ingest.metrics import serve_metrics

    if settings.ARCHIVA_METRICS_PORT:
        serve_metrics(settings.ARCHIVA_METRICS_HOST, settings.ARCHIVA_METRICS_PORT + index)
    server = IngestServer(host, port, reuse_port=reuse_port, commit_process=True, committer_address=committer_address)
    settle_heap()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(server.serve_forever())


class Command(BaseCommand):
    help = "Run the SMTP ingest (journal reports over SMTP+STARTTLS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.ARCHIVA_SMTP_HOST)
        parser.add_argument("--port", type=int, default=settings.ARCHIVA_SMTP_PORT)
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.ARCHIVA_SMTP_PROCESSES,
            help="ingest processes sharing the port (SO_REUSEPORT); default ARCHIVA_SMTP_PROCESSES",
        )

    def handle(self, *args: Any, host: str, port: int, processes: int, **options: Any) -> None:
        cheap_records()  # a log line for every accepted message: no caller lookup for each
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
        """Fork N ingest processes on one port with one shared committer; SIGTERM/SIGINT stop them all.

        The committer is restarted if it dies (the ingest processes answer
        451 meanwhile and reconnect); it ends by itself once every ingest
        process has finished and closed its connection.

        Our own loop because nothing standard fits: multiprocessing's Pool
        and Process restart nothing and cannot wait on the committer beside
        the workers, gunicorn's arbiter serves WSGI apps only, and a process
        manager (systemd, honcho) would give each process its own committer.
        """
        connections.close_all()  # never share a database connection across fork
        shared = SharedCommitter()
        committer = shared.start()
        for handler in logging.getLogger().handlers:
            handler.flush()  # or each child would write the parent's buffered lines again
        children = []
        for index in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    shared.listener.close()
                    serve(host, port, reuse_port=True, index=index, committer_address=shared.address)
                except BaseException:
                    code = 1
                    log.exception("ingest process %d failed", os.getpid())
                    raise
                finally:
                    logging.shutdown()  # os._exit skips it: write the buffered INFO lines first
                    os._exit(code)
            children.append(pid)

        stopping = False

        def forward(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        failed = False
        running = set(children)
        while running or committer:
            pid, status = os.wait()
            if pid == committer:
                shared.exited(status)
                committer = 0
                if running and not stopping:
                    log.error("the shared committer exited (%s); starting a new one", status)
                    time.sleep(RESTART_DELAY)
                    committer = shared.start()
            elif pid in running:
                running.discard(pid)
                failed = failed or os.waitstatus_to_exitcode(status) != 0
                if not running:
                    shared.stop()
        shared.close()
        if failed:
            sys.exit(1)
