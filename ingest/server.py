"""Running the ingest: one event loop of SMTP sessions, a committer for durable I/O.

`IngestServer` is used by `manage.py smtpd` (in the foreground, stopping
gracefully on SIGTERM/SIGINT) and by tests (in a background thread).  The
loop is uvloop's where it is installed: accepting a connection and moving
its bytes costs a third of the standard loop's CPU, and short sessions are
most of an ingest's work.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
import time
from pathlib import Path

from django.conf import settings

from infra.networks import Network, parse_networks
from ingest.commitd import CommitterClient, CommitterHost
from ingest.directory import TokenDirectory
from ingest.policy import FCrDNS, SenderAllowList
from ingest.ratelimit import rate_limiter
from ingest.smtp import Policy, Service, SMTPSession
from ingest.tls import ReloadingContext, ensure_self_signed
from ingest.tuning import STALE_SPOOL_AGE
from regions.current import current_region, foreign_journal_domains

log = logging.getLogger(__name__)


def policy_from_settings() -> Policy:
    region = current_region()
    cache_url, prefix = settings.ARCHIVA_CACHE_URL, f"{settings.ARCHIVA_RATE_LIMIT_PREFIX}:{region.code}"
    return Policy(
        journal_domain=region.journal_domain,
        foreign_domains=foreign_journal_domains(),
        region=region.code,
        spool_dir=settings.ARCHIVA_SPOOL_DIR,
        max_size=settings.ARCHIVA_SMTP_MAX_SIZE,
        max_recipients=settings.ARCHIVA_SMTP_MAX_RECIPIENTS,
        require_tls=settings.ARCHIVA_SMTP_REQUIRE_TLS,
        validation_local_part=region.validation_address.split("@")[0],
        max_sessions=settings.ARCHIVA_SMTP_MAX_SESSIONS,
        max_sessions_per_peer=settings.ARCHIVA_SMTP_MAX_SESSIONS_PER_PEER,
        allowlist=SenderAllowList(enabled=settings.ARCHIVA_SENDER_ALLOWLIST),
        fcrdns=FCrDNS(enabled=settings.ARCHIVA_SENDER_FCRDNS),
        # Shared by every ingest of the region through ARCHIVA_CACHE_URL (ingest.ratelimit).
        tenant_limiter=rate_limiter(
            "tenant", settings.ARCHIVA_TENANT_RATE, settings.ARCHIVA_TENANT_BURST, cache_url=cache_url, prefix=prefix
        ),
        peer_limiter=rate_limiter(
            "peer", settings.ARCHIVA_PEER_RATE, settings.ARCHIVA_PEER_BURST, cache_url=cache_url, prefix=prefix
        ),
    )


def proxy_networks_from_settings() -> list[Network] | None:
    """The load balancer's networks whose connections start with a PROXY header; None when off."""
    return parse_networks(settings.ARCHIVA_SMTP_PROXY_FROM) if settings.ARCHIVA_SMTP_PROXY_PROTOCOL else None


def tls_context_from_settings() -> ReloadingContext:
    """The configured certificate (or the development one), followed for renewals."""
    if settings.ARCHIVA_TLS_CERT:
        cert, key = Path(settings.ARCHIVA_TLS_CERT), Path(settings.ARCHIVA_TLS_KEY)
    else:
        cert, key = ensure_self_signed(settings.DATA_DIR / "tls", settings.ARCHIVA_SMTP_HOSTNAME)
    return ReloadingContext(cert, key, check_interval=settings.ARCHIVA_TLS_RELOAD_INTERVAL)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop serves too, slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def clean_spool(spool_dir: Path, max_age: float = STALE_SPOOL_AGE) -> int:
    """Remove spool files left by a crashed ingest.

    A spool file is never the only copy of anything acknowledged (250 comes
    after the bucket copy), so removing one loses nothing; files younger
    than max_age may belong to another ingest process sharing the folder.
    """
    removed = 0
    cutoff = time.time() - max_age
    for path in spool_dir.glob("in-*.eml") if spool_dir.is_dir() else ():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d stale spool files", removed)
    return removed


class IngestServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        policy: Policy | None = None,
        tls_context: ssl.SSLContext | ReloadingContext | None = None,
        directory: TokenDirectory | None = None,
        timeout: int | None = None,
        shutdown_grace: float = 30.0,
        reuse_port: bool = False,
        committer_address: str | None = None,
    ):
        self.host, self.port = host, port
        self.policy = policy or policy_from_settings()
        self.tls_context = tls_context if tls_context is not None else tls_context_from_settings()
        self.directory = directory or TokenDirectory(settings.ARCHIVA_TOKEN_CACHE_REFRESH)
        self.committer: CommitterClient | None = None
        self.timeout = timeout or settings.ARCHIVA_SMTP_TIMEOUT
        self.service = Service(
            self.policy,
            self.directory,
            hostname=settings.ARCHIVA_SMTP_HOSTNAME,
            tls_context=self.tls_context,
            timeout=self.timeout,
            proxy_from=proxy_networks_from_settings(),
        )
        self.shutdown_grace = shutdown_grace
        self.reuse_port = reuse_port
        # The host's committer (ingest.commitd.CommitterHost); start_in_thread hosts one if not given.
        self.committer_address = committer_address
        self._committer_host: CommitterHost | None = None
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = asyncio.Event()
        self._stopping = threading.Event()

    def _factory(self) -> SMTPSession:
        return SMTPSession(self.service)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        clean_spool(self.policy.spool_dir)
        assert self.committer_address is not None, "an ingest needs its host's committer"
        self.committer = self.service.committer = CommitterClient(self.committer_address, counts=self.service.counts)
        await self.committer.start()
        self.directory.start()
        self._housekeeping = threading.Thread(target=self._housekeep, name="ingest-housekeeping", daemon=True)
        self._housekeeping.start()
        # Accept only once the directory has loaded, or RCPT would answer 451.
        for _ in range(600):
            if self.directory.loaded:
                break
            await asyncio.sleep(0.05)
        self._server = await self._loop.create_server(
            self._factory, self.host, self.port, reuse_address=True, reuse_port=self.reuse_port or None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMTP ingest listening on %s:%d (TLS required: %s)", self.host, self.port, self.policy.require_tls)

    async def shutdown(self) -> None:
        """Stop accepting; let sessions in flight finish within the grace period."""
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        while self._live_sessions() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for session in self._live_sessions():
            if session.transport is not None:
                session.transport.close()
        self.service.accepted_log.flush()
        self.directory.stop()
        self._stopping.set()
        if self.committer is not None:  # set by start(), which made _server
            self.committer.close()
        await loop.run_in_executor(None, self._housekeeping.join, 10)
        self._stopped.set()

    def _housekeep(self) -> None:
        """Every few seconds: record rejection counts; every minute: reload the allow-list."""
        from django.db import connections

        last_reload = 0.0
        try:
            while not self._stopping.is_set():
                self.policy.rejections.flush()
                if time.monotonic() - last_reload > 60:
                    try:
                        self.policy.allowlist.reload()
                        last_reload = time.monotonic()
                    except Exception:
                        log.warning("could not reload the sender allow-list; keeping the current one", exc_info=True)
                self._stopping.wait(5)
            self.policy.rejections.flush()
        finally:
            connections.close_all()

    def _live_sessions(self) -> list[SMTPSession]:
        return [s for s in self.service.sessions if s.transport is not None]

    async def serve_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        await self._stopped.wait()

    # --- in a background thread (tests) ---------------------------------
    def start_in_thread(self) -> IngestServer:
        """The ingest in a thread of this process, its committer in another (tests)."""
        if self.committer_address is None:
            self._committer_host = CommitterHost()
            self._committer_host.start_thread()
            self.committer_address = self._committer_host.address
        ready = threading.Event()

        def run() -> None:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_until_complete(self._stopped.wait())
            loop.close()

        self._thread = threading.Thread(target=run, name="ingest-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("ingest server did not start")
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self.shutdown(), self._loop).result(timeout=60)
            self._thread.join(timeout=10)
        if self._committer_host is not None:
            self._committer_host.stop()  # it commits and answers what it was given first
            self._committer_host.close()
