"""The SMTP session (DESIGN "SMTP ingest"): an asyncio protocol with Archiva's rules.

The process stays thin: reject early in RCPT from the cached token
directory, keep DATA in memory (a spool file when large), hand it to the committer
(durable in each tenant's bucket, then recorded) and only then answer 250.

Why not aiosmtpd's SMTP class: it reads every command and every DATA line
through a StreamReader coroutine, which caps one process at a small fraction
of what the protocol allows even with a handler that does nothing (figures in
bench/README.md, "Why the ingest is built this way").  This protocol parses commands from the receive buffer in the
transport's callback, writes replies without a drain per line, and feeds
DATA in whole chunks to `DataParser`; only the steps that wait (commit,
STARTTLS, a DNS check) leave the callback.  Replies and limits follow
RFC 5321 and aiosmtpd's behaviour, which the tests pin down.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable
from pathlib import Path

from infra.networks import Network, in_networks
from ingest import metrics
from ingest.commitd import CommitterClient
from ingest.dataread import DataParser, DataSink
from ingest.directory import DirectoryUnavailable, Route, TokenDirectory
from ingest.held import HELD_POSTMASTER, HELD_VALIDATION, held_route, is_held
from ingest.policy import FCrDNS, RateLimiter, SenderAllowList
from ingest.proxyproto import ProxyHeaderError, parse_proxy_header
from ingest.record import Envelope as Recorded
from ingest.stats import RejectionCounter
from ingest.tls import ReloadingContext
from ingest.tuning import (
    ACCEPTED_LOG_DELAY,
    DATA_MIN_RATE,
    HOLD_BURST,
    HOLD_RATE,
    LINE_LIMIT,
    LOOKUP_BURST,
    LOOKUP_RATE,
    MAX_BAD_COMMANDS,
    MAX_JUNK_COMMANDS,
    PAUSE_BUFFER,
    PROXY_HEADER_TIMEOUT,
)
from tenants.tokens import parse_local_part

log = logging.getLogger(__name__)

# Commands that lead to no message, allowed between two messages (as Postfix's
# smtpd_junk_command_limit): the per-line deadline alone would let a sender
# that trickles "NOOP" a byte a second keep its session forever.
JUNK_COMMANDS = {"NOOP", "RSET", "VRFY", "HELP", "EXPN", "HELO", "EHLO"}  # and refused RCPTs

# RFC 5321 4.1.2: "FROM:" Reverse-path, always in angle brackets.
MAIL_ARG_RE = re.compile(r"FROM:\s*<([^<>\s]*)>(?:\s+(.*))?", re.IGNORECASE)
RCPT_ARG_RE = re.compile(r"TO:\s*<([^<>\s]+)>(?:\s+(.*))?", re.IGNORECASE)
# MAIL parameters we take: the ones we advertise, and AUTH=<>, which some
# senders add whatever the server offers.
MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "AUTH"}
BODY_TYPES = {"7BIT", "8BITMIME"}  # what 8BITMIME allows (RFC 6152); no BINARYMIME
# RFC 5321 4.1.2: a source route (A-d-l) before the mailbox, "@a,@b:user@c".
# Obsolete; a server must take it and ignore the route (3.6.1, appendix C).
SOURCE_ROUTE_RE = re.compile(r"@[^@,:]+(?:,@[^@,:]+)*:")
# C0 controls, DEL and C1 controls: no command's syntax has a place for them,
# and a NUL in an address got as far as the committer's batch (issue 16).
# One search per command line, never per byte of DATA.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

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
REPLY_PEER_BUSY = "421 4.7.0 Too many connections from your address, try again later"
REPLY_TIMEOUT = "421 4.4.2 Timeout exceeded, closing connection"
REPLY_CONTROL_CHARACTERS = "501 5.5.2 Syntax error: control characters in the command"
REPLY_NETWORK_REFUSED = "554 5.7.1 Sender network not allowed to deliver journal reports"
REPLY_SENDER_NOT_ALLOWED = "550 5.7.1 Sender network not allowed to deliver journal reports"
REPLY_NO_VERIFIED_DOMAIN = "550 5.7.1 The sender's domain is not verified for any tenant"
REPLY_TOO_MANY_UNKNOWN = "450 4.7.1 Too many unknown journal addresses from your address, try again later"
REPLY_TOO_MANY_HELD = "450 4.7.1 Too many messages for postmaster or unverified domains, try again later"
REPLY_SPOOL_FULL = "452 4.3.1 Insufficient system storage, try again later"
REPLY_OK = "250 2.0.0 OK"
REPLY_RCPT_OK = "250 2.1.5 OK"
REPLY_NEED_HELO = "503 5.5.1 Error: send HELO first"
REPLY_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
REPLY_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
REPLY_UNRECOGNIZED = "500 5.5.2 Error: command not recognized"
REPLY_LINE_TOO_LONG = "500 5.5.2 Error: line too long"


# (reply, route, rejection reason; "" for none); `Router.route`'s reply None asks for `route_fresh`.
Routed = tuple[str, Route | None, str]
Routing = tuple[str | None, Route | None, str]


def without_source_route(address: str) -> str | None:
    """The mailbox of a path, without its source route; None for a malformed route."""
    if not address.startswith("@"):
        return address
    route = SOURCE_ROUTE_RE.match(address)
    if route is None:
        return None
    # A route must lead to a mailbox: "<@a:>" is not the null path.
    return address[route.end() :] or None


def mail_params_refusal(params: str, max_size: int) -> str | None:
    """The reply refusing MAIL's parameters (RFC 5321 4.1.2, RFC 1870, RFC 6152), or None."""
    for param in params.split():
        name, equals, value = param.partition("=")
        key = name.upper()
        if key == "SIZE":
            if not (value.isascii() and value.isdigit()):
                return "501 5.5.4 Syntax: SIZE=<number of octets>"
            if int(value) > max_size:
                return REPLY_TOO_BIG
        elif key == "BODY":
            if value.upper() not in BODY_TYPES:
                return "501 5.5.4 Syntax: BODY=7BIT or BODY=8BITMIME"
        elif key == "SMTPUTF8":
            if equals:
                return "501 5.5.4 Syntax: SMTPUTF8 takes no value"
        elif key not in MAIL_PARAMS:
            return f"555 5.5.4 MAIL FROM parameter {name} not recognized"
    return None


class AcceptedLog:
    """The `accepted` INFO line of every message, written in bursts.

    A line per accepted message is what an operator greps for the queue id
    a sender was given.  Made one at a time between the sessions' callbacks,
    the lines cost a tenth of the ingest's throughput (bench/README.md), so
    each accepted message is noted here and the lines are written every
    ACCEPTED_LOG_DELAY seconds in one burst, each with the time of its
    acceptance.  A graceful stop writes what is
    noted (`flush`); a process killed with -9 loses at most that many
    seconds of lines, as the buffered log handler does: what was accepted is
    recorded in the database, not in the log.
    """

    MESSAGE = "accepted %s size=%d sha256=%s tenants=%s rcpts=%d"

    def __init__(self) -> None:
        self._noted: list[tuple[float, str, int, str, list[int], int]] = []

    def add(self, queue_id: str, size: int, sha256: str, tenants: list[int], recipients: int) -> None:
        # Tenant ids, not recipients: a journal address carries its tenant's secret token.
        if not self._noted:
            asyncio.get_running_loop().call_later(ACCEPTED_LOG_DELAY, self.flush)
        self._noted.append((time.time(), queue_id, size, sha256, tenants, recipients))

    def flush(self) -> None:
        noted, self._noted = self._noted, []
        if not noted:
            return
        # One record made the usual way (record factory, thread, process);
        # each line is a copy of it with its own arguments and times:
        # LogRecord.__init__ was a quarter of a line's cost.
        template = log.makeRecord(log.name, logging.INFO, "(unknown file)", 0, self.MESSAGE, (), None)
        fields, kind = template.__dict__, type(template)
        made, relative = template.created, template.relativeCreated
        for created, queue_id, size, sha256, tenants, recipients in noted:
            record = kind.__new__(kind)
            record.__dict__.update(fields)
            record.args = (queue_id, size, sha256, ",".join(map(str, tenants)), recipients)
            # Back-dated to the acceptance: both clocks shifted by the wait.
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            record.relativeCreated = relative - (made - created) * 1000
            log.handle(record)


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
        max_sessions_per_peer: int = 50,
        allowlist: SenderAllowList | None = None,
        fcrdns: FCrDNS | None = None,
        tenant_limiter: RateLimiter | None = None,
        peer_limiter: RateLimiter | None = None,
        lookup_limiter: RateLimiter | None = None,
        hold_limiter: RateLimiter | None = None,
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
        self.max_sessions_per_peer = max_sessions_per_peer
        self.allowlist = allowlist or SenderAllowList(enabled=False)
        self.fcrdns = fcrdns or FCrDNS(enabled=False)
        self.tenant_limiter = tenant_limiter or RateLimiter(rate=0, burst=1)
        self.peer_limiter = peer_limiter or RateLimiter(rate=0, burst=1)
        # Database lookups of tokens the cache does not know, per peer: a
        # fresh address costs one; guessing many gets 450 (Router.route).
        self.lookup_limiter = lookup_limiter or RateLimiter(rate=LOOKUP_RATE, burst=LOOKUP_BURST)
        # Mail held for no tenant, per peer: it costs storage for up to 14 days (ingest.held).
        self.hold_limiter = hold_limiter or RateLimiter(rate=HOLD_RATE, burst=HOLD_BURST)
        self.rejections = RejectionCounter()
        self.admitted = 0  # sessions being served now
        self.peer_sessions: dict[str | None, int] = {}  # of them, per peer address

    def admission_refusal(self, peer: str | None) -> str | None:
        """The greeting that refuses a new connection from `peer`, or None to serve it.

        Checked before the session takes a slot, so that neither a refused
        network nor one busy peer can take every slot from the others.  The
        counts are this process's (one event loop per policy, no lock): with
        ARCHIVA_SMTP_PROCESSES=N the kernel spreads a peer's connections over
        the N processes, so the peer may hold up to N times the cap."""
        if not self.allowlist.allows(peer):
            # RFC 5321 3.1 lets a server refuse in the greeting; we close at
            # once rather than wait for QUIT, so a refused network holds no slot.
            self.reject("sender_not_allowed")
            return REPLY_NETWORK_REFUSED
        if self.admitted >= self.max_sessions:
            # Over capacity: a 4xx greeting makes the sender try again later.
            self.reject("over_capacity")
            return REPLY_BUSY
        if self.peer_sessions.get(peer, 0) >= self.max_sessions_per_peer:
            self.reject("peer_over_capacity")
            return REPLY_PEER_BUSY
        return None

    def admit(self, peer: str | None) -> None:
        self.admitted += 1
        self.peer_sessions[peer] = self.peer_sessions.get(peer, 0) + 1

    def release(self, peer: str | None) -> None:
        self.admitted -= 1
        left = self.peer_sessions.pop(peer, 1) - 1
        if left:  # a peer with no session left takes no room in the dict
            self.peer_sessions[peer] = left

    def reject(self, reason: str, tenant_id: int | None = None) -> None:
        # Held mail (a negative id, see ingest.held) belongs to no tenant: counted with the untenanted.
        self.rejections.add(None if tenant_id is None or is_held(tenant_id) else tenant_id, reason)
        metrics.REJECTED.labels(reason).inc()


class Router:
    """RCPT routing: journal token (or verified sender domain) → tenant route.

    Two addresses route to the region's holding area instead of a tenant
    (ingest.held): postmaster (RFC 5321 §4.5.1: bare, or at the journal
    domain), and the connector's validation address from a sender domain
    that no tenant has verified yet (held until one does).
    """

    def __init__(self, policy: Policy, directory: TokenDirectory):
        self.policy = policy
        self.directory = directory
        self.postmaster = held_route(HELD_POSTMASTER, policy.region)
        self.unclaimed_validation = held_route(HELD_VALIDATION, policy.region)

    def route(self, address: str, mail_from: str = "", peer: str | None = None) -> Routing:
        """(reply, route, rejection reason): cheap format checks first, then the cached lookup.

        Tenant and region come from the token (or, for the connector's
        validation address, the sender's verified domain), never from headers.
        A reply of None: a well-formed token (or a validation mail's sender
        domain) the cache does not know; ask `route_fresh` in a thread
        before answering.
        """
        local, at, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if not at or not local:
            if not at and address.lower() == "postmaster":  # RFC 5321 4.1.1.3: without a domain
                return self._admit(self.postmaster, peer)
            return "553 5.1.3 Malformed address", None, "malformed_recipient"
        if domain in self.policy.foreign_domains:
            return REPLY_OTHER_REGION, None, "other_region"
        if domain != self.policy.journal_domain:
            return REPLY_NOT_OURS, None, "not_our_domain"
        folded = local.lower()
        if folded == "postmaster":
            return self._admit(self.postmaster, peer)
        try:
            if folded == self.policy.validation_local_part:
                sender_domain = mail_from.rpartition("@")[2].lower().rstrip(".")
                if not sender_domain:
                    return REPLY_NO_VERIFIED_DOMAIN, None, "unverified_sender_domain"
                route = self.directory.lookup_domain(sender_domain)
                if route is None:
                    if self.policy.lookup_limiter.allow(peer):
                        return None, None, ""  # verified a moment ago? (route_fresh)
                    route = self.unclaimed_validation  # held until a tenant verifies the domain
            else:
                token = parse_local_part(local)
                route = self.directory.lookup(token) if token is not None else None
                if route is None:
                    if token is None or self.directory.known_missing(token):
                        return REPLY_UNKNOWN, None, "unknown_recipient"
                    if not self.policy.lookup_limiter.allow(peer):
                        return REPLY_TOO_MANY_UNKNOWN, None, "unknown_recipient_guessing"
                    return None, None, ""
        except DirectoryUnavailable:
            return "451 4.3.0 Directory not ready, try again later", None, "directory_unavailable"
        return self._admit(route, peer)

    def route_fresh(self, address: str, mail_from: str = "", peer: str | None = None) -> Routed:
        """`route` for what the cache did not know, asking the database (blocking: run it in a thread).

        A journal token issued since the cache's last refresh is found; the
        validation address goes to the tenant that verified the sender's
        domain, or, if none has, to the holding area (ingest.held)."""
        local = address.rpartition("@")[0]
        route: Route | None
        try:
            if local.lower() == self.policy.validation_local_part:
                sender_domain = mail_from.rpartition("@")[2].lower().rstrip(".")
                route = self.directory.fetch_domain(sender_domain) or self.unclaimed_validation
            else:
                token = parse_local_part(local)
                route = self.directory.fetch(token) if token is not None else None
        except DirectoryUnavailable:
            return "451 4.3.0 Directory not ready, try again later", None, "directory_unavailable"
        if route is None:
            return REPLY_UNKNOWN, None, "unknown_recipient"
        return self._admit(route, peer)

    def _admit(self, route: Route, peer: str | None) -> Routed:
        # Whichever way the tenant was found, its mail stays in its region.
        if route.region != self.policy.region:
            return REPLY_OTHER_REGION, None, "other_region"
        if is_held(route.tenant_id) and not self.policy.hold_limiter.allow(peer):
            return REPLY_TOO_MANY_HELD, None, "held_limit"
        return REPLY_RCPT_OK, route, ""


class Service:
    """What every session of one ingest process shares."""

    def __init__(
        self,
        policy: Policy,
        directory: TokenDirectory,
        *,
        hostname: str,
        tls_context: ssl.SSLContext | ReloadingContext | None,
        timeout: float,
        proxy_from: list[Network] | None = None,
    ):
        self.policy = policy
        # The load balancer's networks, whose connections start with a PROXY header (None: off),
        # and how many of those connections wait for theirs (capped as sessions are).
        self.proxy_from = proxy_from
        self.proxy_pending = 0
        self.router = Router(policy, directory)
        self.committer: CommitterClient | None = None
        self.hostname = hostname
        self._tls = tls_context
        self.timeout = timeout
        self.sessions: set[SMTPSession] = set()
        self.accepted_log = AcceptedLog()
        self.counts = metrics.loop_counts(self.sessions)  # this loop's share of /metrics
        self._idle_check: asyncio.TimerHandle | None = None

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The context for the next handshake: a renewed certificate is used without a restart."""
        if isinstance(self._tls, ReloadingContext):
            return self._tls.current()
        return self._tls

    def watch_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close sessions silent for `timeout` seconds, or past a deadline (started by the first session).

        One timer for all of the loop's sessions, every tenth of the timeout
        (at most a second): a timer per session, set and cancelled for each
        connection, was event-loop work for every message of a sender that
        connects for each (as smtp-source does).  A session is closed between
        `timeout` and `timeout` plus that interval after its last input, or
        after its deadline (`SMTPSession.close_if_late`)."""
        if self._idle_check is None:
            self._idle_check = loop.call_later(self._idle_interval(), self._close_idle, loop)

    def _idle_interval(self) -> float:
        return min(1.0, max(0.05, self.timeout / 10))

    def _close_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for session in list(self.sessions):
            session.close_if_late(now)
        # Stops once no session is left; the next one starts it again.
        self._idle_check = loop.call_later(self._idle_interval(), self._close_idle, loop) if self.sessions else None


class SMTPSession(asyncio.Protocol):
    """One SMTP connection.  Commands are handled in `data_received`; a step
    that must wait sets `_busy`, holds further input and resumes when done."""

    def __init__(self, service: Service):
        self.service = service
        self.policy = service.policy
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._busy = False
        self._paused = False
        self._discarding = False  # skipping the rest of an over-long line
        self._admitted = False
        self._bad_commands = 0
        self._junk_commands = 0  # since the session's start or its last accepted message
        self._last_activity = 0.0  # loop time of the last input
        self._line_started = 0.0  # of the first input of the command line pending in _buf
        self._data_started = 0.0  # of the DATA command being served
        self.peer: str | None = None
        self._proxy_header: bytearray | None = None  # what came of a PROXY header we wait for
        self._proxy_timer: asyncio.TimerHandle | None = None
        self.tls = False
        self.helo: str | None = None
        self._reset_envelope()
        self._data: DataParser | None = None
        self._sink: DataSink | None = None

    def _reset_envelope(self) -> None:
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
        self.envelope: Recorded | None = None

    # --- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream server's transport, not BaseTransport
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        if self.service.proxy_from is not None and in_networks(self.peer, self.service.proxy_from):
            # The load balancer: the client's address comes first, in its header (ingest.proxyproto).
            if self.service.proxy_pending >= self.policy.max_sessions:
                # Before the header nobody is admitted, so the session cap would not hold these.
                self.policy.reject("over_capacity")
                transport.write(REPLY_BUSY.encode() + b"\r\n")
                transport.close()
                return
            self.service.proxy_pending += 1
            self._proxy_header = bytearray()
            self._proxy_timer = self._loop.call_later(PROXY_HEADER_TIMEOUT, self._proxy_header_late)
            return
        self._open(transport)

    def _open(self, transport: asyncio.Transport) -> None:
        """Admit the session from `self.peer` (or refuse it in the greeting) and greet."""
        refusal = self.policy.admission_refusal(self.peer)
        if refusal:
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        self._admitted = True
        self.policy.admit(self.peer)
        self.service.sessions.add(self)
        self._last_activity = self._loop.time()
        self.service.watch_idle(self._loop)
        self._reply(f"220 {self.service.hostname} Archiva ESMTP")

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy_done()
        self._drop_spool()
        self.transport = None
        if self._admitted:
            self._admitted = False
            self.policy.release(self.peer)
            self.service.sessions.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._proxy_header is not None:
            self._take_proxy_header(data)
            return
        now = self._last_activity = self._loop.time()
        try:
            if self._data is not None and not self._busy and not self._buf:
                self._feed(data)  # the common case in DATA: straight to the parser
            else:
                # A command line's deadline runs from its first byte: more
                # bytes of the same line do not move it (a trickle would).
                if not (self._buf or self._discarding) or b"\n" in data:
                    self._line_started = now
                self._buf += data
            self._process()
        except Exception:
            # A fault of ours: the sender must retry later, never bounce.
            log.exception("unexpected error in an SMTP session; closing it with 451")
            self._drop_spool()
            self._reply(REPLY_TEMPFAIL)
            self._close()

    def eof_received(self) -> bool:
        return False  # close our side too

    # --- the PROXY header (ingest.proxyproto) ---------------------------------

    def _take_proxy_header(self, data: bytes) -> None:
        assert self._proxy_header is not None and self.transport is not None
        self._proxy_header += data
        balancer = self.peer
        try:
            header = parse_proxy_header(bytes(self._proxy_header))
        except ProxyHeaderError as exc:
            self._proxy_refused(f"{exc}")
            return
        if header is None:
            return
        rest = bytes(self._proxy_header[header.length :])
        self._proxy_done()
        if header.client is not None:
            self.peer = header.client
        log.debug("PROXY header from %s: client %s", balancer, self.peer)
        self._open(self.transport)
        if rest and self._admitted:
            self.data_received(rest)  # the client spoke before our greeting: its bytes, in order

    def _proxy_header_late(self) -> None:
        self._proxy_timer = None
        if self._proxy_header is not None:
            self._proxy_refused(f"no PROXY header within {PROXY_HEADER_TIMEOUT:g} s")

    def _proxy_refused(self, why: str) -> None:
        """Close a connection from the balancer's networks without a valid header, without a greeting."""
        log.warning("closing a connection from %s without a greeting: %s", self.peer, why)
        self.policy.reject("proxy_header")
        self._proxy_done()
        self._close()

    def _proxy_done(self) -> None:
        if self._proxy_header is None:
            return
        self._proxy_header = None
        self.service.proxy_pending -= 1
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None

    def pause_writing(self) -> None:
        pass  # replies are small; a client that does not read them times out

    def resume_writing(self) -> None:
        pass

    # --- input ----------------------------------------------------------------

    def _process(self) -> None:
        buf = self._buf
        while not self._busy and self.transport is not None:
            if self._data is not None:
                if not buf:
                    break
                chunk = bytes(buf)
                buf.clear()
                self._feed(chunk)
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > LINE_LIMIT:
                    buf.clear()
                    if not self._discarding:
                        self._discarding = True
                        self._reply(REPLY_LINE_TOO_LONG)
                break
            line = bytes(buf[:end])
            del buf[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > LINE_LIMIT:
                self._reply(REPLY_LINE_TOO_LONG)
                continue
            self._command(line[:-1] if line.endswith(b"\r") else line)
        if self.transport is None:
            return
        if len(buf) > PAUSE_BUFFER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        elif self._paused and len(buf) <= PAUSE_BUFFER and not self._busy:
            self._paused = False
            self.transport.resume_reading()

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad("500 5.5.2 Error: bad syntax (not UTF-8)")
            return
        if CONTROL_RE.search(text):
            self.policy.reject("control_characters")
            self._bad(REPLY_CONTROL_CHARACTERS)
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = self._COMMANDS.get(verb)
        if handler is None:
            self._bad(REPLY_UNRECOGNIZED if verb else "500 5.5.2 Error: bad syntax")
            return
        if verb in JUNK_COMMANDS and self._junk():
            return
        handler(self, arg.strip())

    def _junk(self) -> bool:
        """Count a command that led to no message; True when the session was closed for too many."""
        self._junk_commands += 1
        if self._junk_commands <= MAX_JUNK_COMMANDS:
            return False
        self.policy.reject("too_many_commands")
        self._reply("421 4.7.0 Too many commands without a message, closing connection")
        self._close()
        return True

    def _bad(self, reply: str) -> None:
        self._bad_commands += 1
        if self._bad_commands > MAX_BAD_COMMANDS:
            self._reply("421 4.7.0 Too many errors, closing connection")
            self._close()
            return
        self._reply(reply)

    # --- output and waiting ---------------------------------------------------

    def _reply(self, reply: str) -> None:
        if self.transport is not None:
            self.transport.write(reply.encode() + b"\r\n")

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wait(self, step: Awaitable[str | None]) -> None:
        """Run a step that waits; its reply (if any) is sent, then input resumes."""
        self._busy = True
        future = asyncio.ensure_future(step)
        future.add_done_callback(self._step_done)

    def _step_done(self, future: asyncio.Future[str | None]) -> None:
        self._busy = False
        self._restart_line()
        try:
            reply = future.result()
        except Exception:
            # Whatever went wrong is ours: the sender must retry, never bounce.
            log.exception("unexpected error in an SMTP session")
            reply = REPLY_TEMPFAIL
        if reply:
            self._reply(reply)
        self._process()

    def _restart_line(self) -> None:
        """After a step of ours: a command line pipelined meanwhile gets its whole time from now."""
        if self._buf:
            self._line_started = self._loop.time()

    def close_if_late(self, now: float) -> None:
        """421 and close if no input came for the timeout, or past a deadline,
        unless a step of ours is running (its wait is not the sender's).

        Deadlines, so that a sender trickling bytes cannot keep a session: a
        command line must be complete within the timeout of its first byte,
        and a DATA within the timeout plus its bytes at DATA_MIN_RATE (at
        most the size limit's worth) of the DATA command."""
        if self.transport is None or self._busy:
            return
        timeout = self.service.timeout
        if self._data is not None:
            assert self._sink is not None  # the sink lives as long as the parser
            size = min(self._sink.size, self.policy.max_size)
            late = now >= self._data_started + timeout + size / DATA_MIN_RATE
        elif self._buf or self._discarding:
            late = now >= self._line_started + timeout
        else:
            late = False
        if late or now - self._last_activity >= timeout:
            # Counted for /metrics, and in a DATA against its tenants too.
            for tenant_id in self._tenants() if self._data is not None else [None]:
                self.policy.reject("timeout", tenant_id)
            self._reply(REPLY_TIMEOUT)
            self._close()

    # --- commands ---------------------------------------------------------------

    def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            self._reply("501 5.5.4 Syntax: EHLO hostname")
            return
        self.helo = arg
        self._reset_envelope()
        lines = [
            self.service.hostname,
            f"SIZE {self.policy.max_size}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",  # we read pipelined commands correctly
            # No AUTH: the journal token is the credential.
        ]
        if self.service.tls_context is not None and not self.tls:
            lines.append("STARTTLS")
        lines.append("HELP")
        self._reply("\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}")

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self._reply("501 5.5.4 Syntax: HELO hostname")
            return
        self.helo = arg
        self._reset_envelope()
        self._reply(f"250 {self.service.hostname}")

    def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            self._reply("501 5.5.4 Syntax: STARTTLS")
        elif self.tls:
            self._reply("503 5.5.1 Error: TLS already active")
        elif self.service.tls_context is None:
            self._reply("454 4.7.0 TLS not available")
        else:
            self._reply("220 2.0.0 Ready to start TLS")
            # RFC 3207 5: anything pipelined after STARTTLS is discarded, and
            # the socket is held until the handshake takes it over.
            self._buf.clear()
            assert self.transport is not None  # a command came from it
            self.transport.pause_reading()
            self._wait(self._start_tls())

    async def _start_tls(self) -> None:
        context = self.service.tls_context
        assert self.transport is not None and context is not None  # smtp_STARTTLS checked
        try:
            transport = await self._loop.start_tls(
                self.transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.service.timeout,
            )
        except Exception as exc:  # handshake failure, timeout, reset: this connection only
            log.info("TLS handshake with %s failed: %s", self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(exc)
            return None
        if transport is None:  # the connection went away during the handshake
            self.connection_lost(None)
            return None
        self.transport = transport
        self.tls = True
        self.helo = None  # RFC 3207 4.2: forget what the client said before
        self._reset_envelope()
        self._paused = False  # the TLS transport reads from the start
        return None

    def smtp_MAIL(self, arg: str) -> None:
        if self.helo is None:
            self._reply(REPLY_NEED_HELO)
            return
        if self.policy.require_tls and not self.tls:
            self.policy.reject("tls_required")
            self._reply(REPLY_TLS_REQUIRED)
            return
        match = MAIL_ARG_RE.fullmatch(arg)
        if match is None:
            self._bad("501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]")
            return
        if self.mail_from is not None:
            self._reply("503 5.5.1 Error: nested MAIL command")
            return
        address, params = match.groups()
        address = without_source_route(address)
        if address is None or (
            address and (address.count("@") != 1 or address.startswith("@") or address.endswith("@"))
        ):
            self._reply("553 5.1.3 Malformed sender address")
            return
        refusal = mail_params_refusal(params, self.policy.max_size) if params else None
        if refusal:
            self._reply(refusal)
            return
        refusal = self._sender_refusal()
        if refusal:
            self._reply(refusal)
            return
        confirmed = self.policy.fcrdns.cached(self.peer)
        if confirmed is None:  # not known yet: ask DNS in a thread, hold the session meanwhile
            self._wait(self._mail_after_fcrdns(address))
        elif not confirmed:
            self.policy.reject("sender_not_allowed")
            self._reply(REPLY_SENDER_NOT_ALLOWED)
        else:
            self._reply(self._start_envelope(address))

    def _sender_refusal(self) -> str | None:
        """The refusal for this peer from the allow-list or the peer rate, or None."""
        if not self.policy.allowlist.allows(self.peer):
            self.policy.reject("sender_not_allowed")
            return REPLY_SENDER_NOT_ALLOWED
        if not self.policy.peer_limiter.allow(self.peer):
            self.policy.reject("rate_limited")
            return REPLY_PEER_RATE_LIMITED
        return None

    async def _mail_after_fcrdns(self, address: str) -> str:
        confirmed = await self._loop.run_in_executor(None, self.policy.fcrdns.confirms, self.peer)
        if not confirmed:
            self.policy.reject("sender_not_allowed")
            return REPLY_SENDER_NOT_ALLOWED
        return self._start_envelope(address)

    def _start_envelope(self, address: str) -> str:
        version = cipher = ""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            version = ssl_object.version() or ""
            cipher = (ssl_object.cipher() or ("",))[0]
        # The null reverse-path <> (RFC 5321 4.5.5) is legal: it is stored as "".
        self.mail_from = address
        self.envelope = Recorded(
            mail_from=address, peer_ip=self.peer, helo=self.helo or "", tls_version=version, tls_cipher=cipher
        )
        return "250 2.1.0 OK"

    def smtp_RCPT(self, arg: str) -> None:
        if self.helo is None:
            self._reply(REPLY_NEED_HELO)
            return
        if self.mail_from is None:
            self._reply(REPLY_NEED_MAIL)
            return
        match = RCPT_ARG_RE.fullmatch(arg)
        if match is None:
            self._bad("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if match.group(2):
            self._reply(f"555 5.5.4 RCPT TO parameters not recognized: {match.group(2)}")
            return
        address = without_source_route(match.group(1))
        if not address:
            self._reply("553 5.1.3 Malformed address")
            return
        reply, route, reason = self.service.router.route(address, self.mail_from, self.peer)
        if reply is None:  # a token the cache does not know (yet): ask the database, off the loop
            self._wait(self._rcpt_after_lookup(address))
            return
        self._rcpt_routed(address, reply, route, reason)

    async def _rcpt_after_lookup(self, address: str) -> None:
        router = self.service.router
        mail_from = self.mail_from
        assert mail_from is not None  # smtp_RCPT checked; input waits for this step
        routed = await self._loop.run_in_executor(None, router.route_fresh, address, mail_from, self.peer)
        self._rcpt_routed(address, *routed)

    def _rcpt_routed(self, address: str, reply: str, route: Route | None, reason: str) -> None:
        if route is not None:
            if len(self.rcpt_tos) >= self.policy.max_recipients:
                reply, reason = REPLY_TOO_MANY_RCPT, "too_many_recipients"
            elif not self.policy.tenant_limiter.allow(route.tenant_id):
                reply, reason = REPLY_RATE_LIMITED, "rate_limited"
        if reason:  # counted against the tenant when the recipient named one
            self.policy.reject(reason, route.tenant_id if route is not None else None)
            # A refused recipient leads to no message either: a sender repeating
            # refused RCPTs slowly is bounded like one repeating NOOP.
            if self._junk():
                return
        else:
            assert self.envelope is not None and route is not None  # MAIL started it; no reason: routed
            self.rcpt_tos.append(address)
            self.envelope.add_recipient(route, address)
        self.service.counts.reply("RCPT", reply)
        self._reply(reply)

    def smtp_DATA(self, arg: str) -> None:
        if self.helo is None:
            self._reply(REPLY_NEED_HELO)
            return
        if arg:
            self._reply("501 5.5.4 Syntax: DATA")
            return
        if not self.rcpt_tos:
            self._reply(REPLY_NEED_RCPT if self.mail_from is None else "554 5.5.1 Error: no valid recipients")
            return
        self._sink = DataSink(self.policy.max_size, spool_dir=self.policy.spool_dir)
        self._data = DataParser(self._sink)
        self._data_started = self._last_activity  # the time of the bytes that carried DATA
        self._reply("354 End data with <CR><LF>.<CR><LF>")

    # RFC 5321 4.1.1: RSET and QUIT take no argument, VRFY needs one.
    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self._reply("501 5.5.4 Syntax: RSET")
            return
        self._reset_envelope()
        self._reply(REPLY_OK)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(REPLY_OK)

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._reply("501 5.5.4 Syntax: QUIT")
            return
        self._reply("221 2.0.0 Bye")
        self._close()

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self._reply("501 5.5.4 Syntax: VRFY <address>")
            return
        self._reply("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_HELP(self, arg: str) -> None:
        self._reply("250 Supported commands: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")

    def smtp_EXPN(self, arg: str) -> None:
        self._reply("502 5.5.1 EXPN not implemented")

    _COMMANDS = {
        "EHLO": smtp_EHLO,
        "HELO": smtp_HELO,
        "STARTTLS": smtp_STARTTLS,
        "MAIL": smtp_MAIL,
        "RCPT": smtp_RCPT,
        "DATA": smtp_DATA,
        "RSET": smtp_RSET,
        "NOOP": smtp_NOOP,
        "QUIT": smtp_QUIT,
        "VRFY": smtp_VRFY,
        "HELP": smtp_HELP,
        "EXPN": smtp_EXPN,
    }

    # --- DATA -------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        assert self._data is not None  # called only in DATA
        leftover = self._data.feed(chunk)
        if leftover is None:
            return
        # Bytes past the end mark are pipelined commands.
        self._buf += leftover
        self._line_started = self._last_activity
        self._data = None
        sink, self._sink = self._sink, None
        assert sink is not None and self.envelope is not None and self.service.committer is not None  # DATA began
        message = sink.finish()
        if message is None:
            self._end_data(self._refusal_after_data(sink))
            return
        # The committer owns a spool file from here and removes it.
        self._busy = True
        started = time.monotonic()
        future = self.service.committer.submit(self.envelope, message, sink.sha256, sink.size)
        future.add_done_callback(lambda f: self._committed(f, sink, started))

    def _refusal_after_data(self, sink: DataSink) -> str:
        if sink.overflow:
            for tenant_id in self._tenants():
                self.policy.reject("too_large", tenant_id)
            return REPLY_TOO_BIG
        log.error("spool write failed, answering 452: %s", sink.error)
        for tenant_id in self._tenants():
            self.policy.reject("spool_full", tenant_id)
        return REPLY_SPOOL_FULL

    def _committed(self, future: asyncio.Future[tuple[str, str]], sink: DataSink, started: float) -> None:
        self._busy = False
        self._restart_line()
        error = future.exception()
        if error is not None:
            log.error("could not make a message durable; answering 451: %s", error)
            for tenant_id in self._tenants():
                self.policy.reject("temporary_failure", tenant_id)
            self._end_data(REPLY_TEMPFAIL)
        else:
            queue_id, sha256 = future.result()
            self._junk_commands = 0
            self.service.counts.accepted_message(sink.size, time.monotonic() - started)
            if log.isEnabledFor(logging.INFO):
                self.service.accepted_log.add(queue_id, sink.size, sha256, self._tenants(), len(self.rcpt_tos))
            self._end_data(f"250 2.0.0 {queue_id} Ok: queued")
        self._process()

    def _end_data(self, reply: str) -> None:
        self._reset_envelope()
        self.service.counts.reply("DATA", reply)
        self._reply(reply)

    def _tenants(self) -> list[int]:
        return list(self.envelope.routes) if self.envelope else []

    def _drop_spool(self) -> None:
        """The connection ended inside DATA: nothing of it is kept."""
        self._data = None
        if self._sink is not None:
            self._sink.discard()
            self._sink = None
