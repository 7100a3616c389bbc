"""The SMTP session: aiosmtpd with Archiva's rules (DESIGN "SMTP ingest").

The process stays thin: reject early in RCPT from the cached token
directory, stream DATA to a spool file, make it durable in each tenant's
bucket and record it, and only then answer 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from infra.logs import redact
from ingest import metrics
from ingest.dataread import DataSink, read_data
from ingest.directory import DirectoryUnavailable, TokenDirectory
from ingest.policy import FCrDNS, RateLimiter, SenderAllowList
from ingest.record import Envelope as Recorded
from ingest.record import GroupCommitter
from ingest.stats import RejectionCounter
from tenants.tokens import parse_local_part

log = logging.getLogger(__name__)

SIZE_PARAM_RE = re.compile(r"\bSIZE=(\d+)\b", re.IGNORECASE)
# RFC 5321 4.1.2: "FROM:" Reverse-path, always in angle brackets.
MAIL_ARG_RE = re.compile(r"FROM:\s*<([^<>\s]*)>(?:\s+(.*))?", re.IGNORECASE)
# The common case of a path: <dot-atom@domain>; anything else (quoted local
# parts, source routes) goes to aiosmtpd's full RFC 5322 parser.
SIMPLE_PATH_RE = re.compile(
    r"\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*))>(.*)",
    re.DOTALL,
)
RCPT_ARG_RE = re.compile(r"TO:\s*<([^<>\s]+)>(?:\s+(.*))?", re.IGNORECASE)

REPLY_TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
REPLY_UNKNOWN = "550 5.1.1 No such journal recipient"
REPLY_NOT_OURS = "550 5.7.1 Relaying denied: not a journal domain of this region"
REPLY_OTHER_REGION = "550 5.7.1 That journal address belongs to another region"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
REPLY_TEMPFAIL = "451 4.3.0 Temporary storage failure, try again later"
REPLY_TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
REPLY_RATE_LIMITED = "451 4.7.1 Delivery rate limit exceeded, try again later"
REPLY_PEER_RATE_LIMITED = "451 4.7.1 Too many messages from your address, try again later"
REPLY_BUSY = "421 4.3.2 Too many connections, try again later"
REPLY_SENDER_NOT_ALLOWED = "550 5.7.1 Sender network not allowed to deliver journal reports"
REPLY_NO_VERIFIED_DOMAIN = "550 5.7.1 The sender's domain is not verified for any tenant"
REPLY_SPOOL_FULL = "452 4.3.1 Insufficient system storage, try again later"


class _CachedMembers:
    """aiosmtpd's SMTP.__init__ calls inspect.getmembers(self) and (handler)
    on every connection to find `auth_*` methods: ~0.7 ms per connection,
    most of the CPU of a short session.  Which names exist depends on the
    class only, so they are listed once per class; values are still read
    from the instance."""

    def __init__(self):
        self._names: dict[type, list[str]] = {}

    def getmembers(self, obj):
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = [name for name, _ in inspect.getmembers(obj) if name.startswith("auth_")]
        return [(name, getattr(obj, name)) for name in names]

    def __getattr__(self, name):
        return getattr(inspect, name)


aiosmtpd.smtp.inspect = _CachedMembers()  # type: ignore[attr-defined]


class Policy:
    """What a deployment accepts; built once per process from settings."""

    def __init__(
        self,
        *,
        journal_domain: str,
        foreign_domains: set[str],
        region: str,
        spool_dir: Path,
        max_size: int,
        max_recipients: int,
        require_tls: bool,
        validation_local_part: str = "archive",
        max_sessions: int = 500,
        allowlist: SenderAllowList | None = None,
        fcrdns: FCrDNS | None = None,
        tenant_limiter: RateLimiter | None = None,
        peer_limiter: RateLimiter | None = None,
    ):
        self.journal_domain = journal_domain.lower()
        self.foreign_domains = {d.lower() for d in foreign_domains}
        self.region = region
        self.spool_dir = spool_dir
        self.max_size = max_size
        self.max_recipients = max_recipients
        self.require_tls = require_tls
        self.validation_local_part = validation_local_part
        self.max_sessions = max_sessions
        self.allowlist = allowlist or SenderAllowList(enabled=False)
        self.fcrdns = fcrdns or FCrDNS(enabled=False)
        self.tenant_limiter = tenant_limiter or RateLimiter(rate=0, burst=1)
        self.peer_limiter = peer_limiter or RateLimiter(rate=0, burst=1)
        self.rejections = RejectionCounter()
        self.admitted = 0  # sessions being served now

    def reject(self, reason: str, tenant_id: int | None = None) -> None:
        self.rejections.add(tenant_id, reason)
        metrics.REJECTED.labels(reason).inc()

class JournalHandler:
    """aiosmtpd handler: RCPT routing; DATA is handled by ArchivaSMTP."""

    def __init__(self, policy: Policy, directory: TokenDirectory, committer: GroupCommitter | None):
        self.policy = policy
        self.directory = directory
        self.committer = committer

    async def handle_exception(self, error: Exception) -> str:
        # Whatever went wrong is ours: the sender must retry, never bounce.
        log.exception("unexpected error in an SMTP session", exc_info=error)
        return REPLY_TEMPFAIL

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # aiosmtpd lists SIZE, 8BITMIME, SMTPUTF8 and STARTTLS; add PIPELINING
        # (we read pipelined commands correctly) before the final line.
        # We take no AUTH: the journal token is the credential.
        listed = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*listed, "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        recorded: Recorded = envelope.archiva
        reply, route, reason = self.route(address, recorded.mail_from)
        if route is not None:
            if len(envelope.rcpt_tos) >= self.policy.max_recipients:
                reply, route, reason = REPLY_TOO_MANY_RCPT, None, "too_many_recipients"
            elif not self.policy.tenant_limiter.allow(route.tenant_id):
                reply, reason = REPLY_RATE_LIMITED, "rate_limited"
                self.policy.reject(reason, route.tenant_id)
                route = None
        if route is not None:
            envelope.rcpt_tos.append(address)
            recorded.add_recipient(route, address)
        elif reason:
            self.policy.reject(reason)
        metrics.REPLIES.labels("RCPT", reply[:3]).inc()
        return reply

    def route(self, address: str, mail_from: str = ""):
        """(reply, route, rejection reason): cheap format checks first, then the cached lookup.

        Tenant and region come from the token (or, for the connector's
        validation address, the sender's verified domain), never from headers.
        """
        local, at, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if not at or not local:
            return "553 5.1.3 Malformed address", None, "malformed_recipient"
        if domain in self.policy.foreign_domains:
            return REPLY_OTHER_REGION, None, "other_region"
        if domain != self.policy.journal_domain:
            return REPLY_NOT_OURS, None, "not_our_domain"
        try:
            if local.lower() == self.policy.validation_local_part:
                sender_domain = mail_from.rpartition("@")[2].lower().rstrip(".")
                route = self.directory.lookup_domain(sender_domain) if sender_domain else None
                if route is None:
                    return REPLY_NO_VERIFIED_DOMAIN, None, "unverified_sender_domain"
                return "250 2.1.5 OK", route, ""
            token = parse_local_part(local)
            if token is None:
                return REPLY_UNKNOWN, None, "unknown_recipient"
            route = self.directory.lookup(token)
        except DirectoryUnavailable:
            return "451 4.3.0 Directory not ready, try again later", None, "directory_unavailable"
        if route is None:
            return REPLY_UNKNOWN, None, "unknown_recipient"
        if route.region != self.policy.region:
            return REPLY_OTHER_REGION, None, "other_region"
        return "250 2.1.5 OK", route, ""


class ArchivaSMTP(SMTP):
    def __init__(self, handler: JournalHandler, **kwargs):
        self.policy = handler.policy
        super().__init__(
            handler,
            data_size_limit=handler.policy.max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            **kwargs,
        )

    def _cb_client_connected(self, reader, writer):
        super()._cb_client_connected(reader, writer)
        # Bulk reads need a buffer larger than one command line; command
        # length is still checked against command_size_limit per command.
        reader._limit = 64 * 1024  # type: ignore[attr-defined]

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        registry = getattr(self, "_archiva_sessions", None)
        if registry is not None:
            registry.discard(self)

    def _getaddr(self, arg: str):
        # aiosmtpd parses every path with email's RFC 5322 parser, ~0.5 ms a
        # call; most paths are plain dot-atoms that a regex settles exactly.
        match = SIMPLE_PATH_RE.fullmatch(arg or "")
        if match is not None:
            return match.group(1), match.group(2)
        return super()._getaddr(arg)

    def _create_envelope(self) -> Envelope:
        envelope = super()._create_envelope()
        envelope.archiva = None  # type: ignore[attr-defined]
        return envelope

    async def _handle_client(self) -> None:
        if self.policy.admitted >= self.policy.max_sessions:
            # Over capacity: a 4xx greeting makes the sender try again later.
            self.policy.reject("over_capacity")
            await self.push(REPLY_BUSY)
            self.transport.close()
            return
        self.policy.admitted += 1  # one event loop per policy: no lock needed
        metrics.SESSIONS.inc()
        try:
            await super()._handle_client()
        finally:
            self.policy.admitted -= 1
            metrics.SESSIONS.dec()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.policy.require_tls and not self._tls_protocol:
            self.policy.reject("tls_required")
            await self.push(REPLY_TLS_REQUIRED)
            return
        match = MAIL_ARG_RE.fullmatch((arg or "").strip())
        if match is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]")
            return
        refusal = await self._sender_policy()
        if refusal:
            await self.push(refusal)
            return
        address, params = match.groups()
        if address and (address.count("@") != 1 or address.startswith("@") or address.endswith("@")):
            await self.push("553 5.1.3 Malformed sender address")
            return
        size = SIZE_PARAM_RE.search(params or "")
        if size and int(size.group(1)) > self.policy.max_size:
            await self.push(REPLY_TOO_BIG)
            return
        if not address:
            # The null reverse-path <> (RFC 5321 4.5.5) is legal; aiosmtpd
            # refuses it, so it is taken here.
            if await self.check_helo_needed():
                return
            if self.envelope.mail_from:
                await self.push("503 5.5.1 Error: nested MAIL command")
                return
            self.envelope.mail_from = "<>"
            self.envelope.archiva = self._recorded_envelope()
            self.envelope.archiva.mail_from = ""
            await self.push("250 2.1.0 OK")
            return
        await super().smtp_MAIL(arg)
        if self.envelope.mail_from is not None and self.envelope.archiva is None:
            self.envelope.archiva = self._recorded_envelope()

    async def _sender_policy(self) -> str | None:
        """The refusal for this peer, or None: allow-list, rate, then FCrDNS."""
        peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else None
        if not self.policy.allowlist.allows(peer):
            self.policy.reject("sender_not_allowed")
            return REPLY_SENDER_NOT_ALLOWED
        if not self.policy.peer_limiter.allow(peer):
            self.policy.reject("rate_limited")
            return REPLY_PEER_RATE_LIMITED
        if self.policy.fcrdns.enabled:
            confirmed = await asyncio.get_running_loop().run_in_executor(None, self.policy.fcrdns.confirms, peer)
            if not confirmed:
                self.policy.reject("sender_not_allowed")
                return REPLY_SENDER_NOT_ALLOWED
        return None

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.envelope.mail_from and RCPT_ARG_RE.fullmatch((arg or "").strip()) is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        await super().smtp_RCPT(arg)

    def _recorded_envelope(self) -> Recorded:
        session: Session = self.session
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        version = cipher = ""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            version = ssl_object.version() or ""
            cipher = (ssl_object.cipher() or ("",))[0]
        return Recorded(
            mail_from=self.envelope.mail_from or "",
            peer_ip=peer,
            helo=session.host_name or "",
            tls_version=version,
            tls_cipher=cipher,
        )

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool, out, error = self._open_spool()
        try:
            with out or contextlib.nullcontext():
                sink = DataSink(out=out, limit=self.policy.max_size, error=error)
                leftover = await read_data(self._reader.read, sink, self._reset_timeout)
            # Bytes read past the end mark are pipelined commands: give them
            # back to the reader so the command loop sees them.
            if leftover:
                self._reader._buffer[:0] = leftover  # type: ignore[attr-defined]
            reply = await self._finish(sink, spool)
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)
        self._set_post_data_state()
        metrics.REPLIES.labels("DATA", reply[:3]).inc()
        await self.push(reply)

    def _open_spool(self):
        """(path, file, error): a spool file for DATA, or the error that prevented one."""
        try:
            try:
                fd, name = tempfile.mkstemp(dir=self.policy.spool_dir, prefix="in-", suffix=".eml")
            except FileNotFoundError:  # first message, or the folder was removed: make it once
                self.policy.spool_dir.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=self.policy.spool_dir, prefix="in-", suffix=".eml")
            return Path(name), os.fdopen(fd, "wb"), None
        except OSError as exc:
            log.error("cannot open a spool file in %s: %s", self.policy.spool_dir, exc)
            return None, None, exc

    def _tenants(self) -> list[int]:
        recorded: Recorded | None = self.envelope.archiva
        return list(recorded.routes) if recorded else []

    async def _finish(self, sink: DataSink, spool: Path | None) -> str:
        if sink.overflow:
            for tenant_id in self._tenants():
                self.policy.reject("too_large", tenant_id)
            return REPLY_TOO_BIG
        if sink.error is not None or spool is None:
            log.error("spool write failed, answering 452: %s", sink.error)
            for tenant_id in self._tenants():
                self.policy.reject("spool_full", tenant_id)
            return REPLY_SPOOL_FULL
        recorded: Recorded = self.envelope.archiva
        handler: JournalHandler = self.event_handler
        started = time.monotonic()
        try:
            queue_id = await handler.committer.commit(recorded, spool, sink.sha256, sink.size)
        except Exception:
            log.exception("could not make a message durable; answering 451")
            for tenant_id in self._tenants():
                self.policy.reject("temporary_failure", tenant_id)
            return REPLY_TEMPFAIL
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
        metrics.ACCEPTED.inc()
        metrics.ACCEPTED_BYTES.inc(sink.size)
        log.info(
            "accepted %s size=%d sha256=%s tenants=%d rcpts=%s",
            queue_id,
            sink.size,
            sink.sha256,
            len(recorded.routes),
            redact(",".join(self.envelope.rcpt_tos)),
        )
        return f"250 2.0.0 {queue_id} Ok: queued"
