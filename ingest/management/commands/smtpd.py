"""`manage.py smtpd`: the SMTP ingest, in the foreground."""

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from infra.logs import cheap_records
from infra.runtime import die_with_parent, settle_heap
from ingest.commitd import CommitterHost
from ingest.server import IngestServer, new_event_loop
from ingest.tuning import RESTART_DELAY

log = logging.getLogger(__name__)


def serve(host: str, port: int, index: int, committer_address: str) -> None:
    """One ingest process (forked by the command): sessions on the shared port, messages to the host's committer."""
    from ingest.metrics import serve_metrics

    if settings.ARCHIVA_METRICS_PORT:
        if settings.ARCHIVA_TLS_CERT:
            from prometheus_client import REGISTRY

            from infra.certmetrics import CertificateCollector

            REGISTRY.register(CertificateCollector(settings.ARCHIVA_TLS_CERT))
        serve_metrics(settings.ARCHIVA_METRICS_HOST, settings.ARCHIVA_METRICS_PORT + index)
    server = IngestServer(host, port, reuse_port=True, committer_address=committer_address)
    settle_heap()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(server.serve_forever())


def check_port(host: str, port: int) -> None:
    """Raise OSError if another program listens on host:port.

    The ingest processes bind with SO_REUSEPORT, which would let them share
    the port with an ingest already running; this probe binds without it.
    """
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


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
            check_port(host, port)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._run_processes(host, port, processes)
        self.stdout.write("SMTP ingest stopped")

    def _run_processes(self, host: str, port: int, processes: int) -> None:
        """Fork N ingest processes on one port with one committer; SIGTERM/SIGINT stop them all.

        One way to run whatever N is (1 by default): this process only
        supervises, the ingest processes share the port (SO_REUSEPORT, the
        kernel spreads connections over them) and the committer process.

        The committer is restarted if it dies (the ingest processes answer
        451 meanwhile and reconnect); it ends by itself once every ingest
        process has finished and closed its connection.

        Our own loop because nothing standard fits: multiprocessing's Pool
        and Process restart nothing and cannot wait on the committer beside
        the workers, gunicorn's arbiter serves WSGI apps only, and a process
        manager (systemd, honcho) would give each process its own committer.
        """
        connections.close_all()  # never share a database connection across fork
        shared = CommitterHost()
        committer = shared.start_process()
        supervisor = os.getpid()
        for handler in logging.getLogger().handlers:
            handler.flush()  # or each child would write the parent's buffered lines again
        children = []
        for index in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    die_with_parent(signal.SIGKILL, supervisor)  # killed with it, as one process would be
                    shared.listener.close()
                    serve(host, port, index, shared.address)
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
                    log.error("the committer exited (%s); starting a new one", status)
                    time.sleep(RESTART_DELAY)
                    committer = shared.start_process()
            elif pid in running:
                running.discard(pid)
                failed = failed or os.waitstatus_to_exitcode(status) != 0
                if not running:
                    shared.stop()
        shared.close()
        if failed:
            sys.exit(1)
