"""The host's committer: the ingest's sessions hand messages over a socket.

The event loop of an ingest process parses SMTP for hundreds of sessions;
storing, recording and flushing are Python work too, and in the same process
they would take the interpreter lock from the loop in every system call
and slow both down several times (bench/README.md).  So a host has one
committer process (`python -m ingest.committer_process`), listening on an
abstract Unix socket that every ingest process of the host connects to:

    session --(request: id, envelope as plain values, bytes or spool file, sha256, size)--> committer
    session <--(a batch of replies: id, queue id and sha256, or error)------ committer

A message held in memory comes without its SHA-256 (None): the committer
hashes it as it makes the request's `Job`, off the ingest's event loop.

The committer is a `GroupCommitter` (store, record, one flush per batch).
A session's 250 still waits for its own message to be stored and recorded;
if the committer goes away, the messages in flight are answered 451, the
host starts a new one and the ingest processes reconnect (`CommitterHost`).

The frames are multiprocessing.connection's wire format (a 4-byte big-endian
length, then the pickle), written by hand because its `Connection` blocks on
every send and reads one message per two recv calls, while the committer
serves every ingest process from one thread with non-blocking sends and
1 MB reads, and the ingest's end is an asyncio Protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from infra.runtime import die_with_parent
from ingest import metrics
from ingest.record import Envelope, GroupCommitter, Job, Outcome
from ingest.tuning import LISTEN_POLL, MAX_BATCH_BYTES, RECEIVE_SIZE, RECONNECT_TIMEOUT, RESTART_DELAY

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
ROOT = Path(__file__).resolve().parent.parent


# A committer's reply to one request: (request id, queue id, sha256, None) or (request id, None, None, error).
Reply = tuple[int, str | None, str | None, str | None]


class CommitFailed(Exception):
    """The committer could not make a message durable (storage, database, or itself)."""


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def unframe(buf: bytearray) -> list[Any]:
    """Take every complete frame off the front of buf (one deletion at the end:
    deleting each frame from the front would move the rest every time)."""
    items = []
    start, end = 0, len(buf)
    with memoryview(buf) as view:
        while end - start >= HEADER.size:
            (size,) = HEADER.unpack_from(view, start)
            if end - start < HEADER.size + size:
                break
            # Only our own processes are at either end: an abstract socket of this host's smtpd.
            items.append(pickle.loads(view[start + HEADER.size : start + HEADER.size + size]))  # noqa: S301
            start += HEADER.size + size
    del buf[:start]
    return items


class _Connection:
    """One ingest process as the committer sees it."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.outbox = bytearray()  # replies its socket has not taken yet
        self.waiting = False  # the selector watches for room to send the outbox
        self.ended = False


class CommitService:
    """The committer's side: read requests until end of stream, commit and answer in batches.

    One thread receives, stores, records, flushes and answers: a batch is
    every request that has arrived when the previous batch is answered, so a
    busy ingest gets large batches and an idle one a reply at once
    (`GroupCommitter`).  It serves every ingest process of the host that
    connects to `listener` (tests may hand it connected sockets): one batch,
    one flush for all of them.
    """

    def __init__(self, *socks: socket.socket, listener: socket.socket | None = None):
        self.listener = listener
        self.connections: list[_Connection] = []
        self.selector = selectors.DefaultSelector()
        self.committer = GroupCommitter()
        self._served = False  # an ingest process has connected to the listener
        self.stop_listening = threading.Event()  # set: take no new connections, end when the last one does
        if listener is not None:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ)
        for sock in socks:
            self._add(sock)

    def _add(self, sock: socket.socket) -> None:
        connection = _Connection(sock)
        self.connections.append(connection)
        self.selector.register(sock, selectors.EVENT_READ, connection)
        self._send(connection, [])  # ready: the ingest starts listening only now

    def _send(self, connection: _Connection, replies: list[Reply]) -> None:
        """Send a frame of replies, or as much as the socket takes now; the
        rest waits in the connection's outbox for the selector.  An ingest
        process that stops reading (wedged, or stopped) must not hold up the
        commits and replies of the others."""
        connection.outbox += frame(replies)
        self._flush_outbox(connection)

    def _flush_outbox(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(connection.outbox)  # the ingest went away: its senders retry what got no 250
        del connection.outbox[:sent]
        waiting = bool(connection.outbox)
        if waiting != connection.waiting and connection in self.connections:
            connection.waiting = waiting
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
            self.selector.modify(connection.sock, events, connection)

    def run(self) -> None:
        # One receive buffer for the process's life: recv(1 MB) would map and
        # unmap a fresh megabyte for every read.
        chunk = bytearray(RECEIVE_SIZE)
        view = memoryview(chunk)
        batch: list[Job] = []  # requests received, not yet committed
        owner: dict[int, _Connection] = {}  # id(job) -> its connection (request ids are per connection)
        try:
            while self.connections or self.listener is not None:
                if self.stop_listening.is_set() and self.listener is not None:
                    self._close_listener()
                for key, events in self.selector.select(LISTEN_POLL if self.listener is not None else None):
                    if key.fileobj is self.listener:
                        self._accept()
                        continue
                    connection: _Connection = key.data
                    if events & selectors.EVENT_WRITE:
                        self._flush_outbox(connection)
                    if not events & selectors.EVENT_READ:
                        continue
                    while not connection.ended and len(connection.buf) < MAX_BATCH_BYTES:  # take all there is
                        try:
                            received = connection.sock.recv_into(chunk, RECEIVE_SIZE, socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            log.warning("committer: connection to an ingest process failed: %s", exc)
                            received = 0
                        connection.ended = not received
                        connection.buf += view[:received]
                for connection in self.connections:
                    for request_id, envelope, message, sha256, size in unframe(connection.buf):
                        job = Job(request_id, Envelope.from_wire(envelope), message, sha256, size)
                        batch.append(job)
                        owner[id(job)] = connection
                if batch:
                    taken, owners, batch, owner = batch, owner, [], {}  # committed once, whatever answering meets
                    self._answer(owners, self.committer.commit(taken))
                self._drop_ended()
        finally:
            # Whatever was received and not yet committed is (its sender may not hear of it, and send it again).
            if batch:
                self._answer(owner, self.committer.commit(batch))
            self.committer.close()
            self.selector.close()
            for connection in self.connections:
                connection.sock.close()
            if self.listener is not None:
                self.listener.close()

    def _answer(self, owner: dict[int, _Connection], outcomes: list[Outcome]) -> None:
        """Each connection gets one frame with its replies (outcomes come in no particular order)."""
        replies: dict[_Connection, list[Reply]] = {}
        for job, error in outcomes:
            replies.setdefault(owner[id(job)], []).append(
                (job.request_id, job.queue_id, job.sha256, None)
                if error is None
                else (job.request_id, None, None, _describe(error))
            )
        for connection, answers in replies.items():
            self._send(connection, answers)

    def _accept(self) -> None:
        assert self.listener is not None  # the selector reports only a registered listener
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        self._served = True
        self._add(sock)

    def _drop_ended(self) -> None:
        for connection in [c for c in self.connections if c.ended]:
            self.selector.unregister(connection.sock)
            self.connections.remove(connection)
            connection.sock.close()  # everything it sent is answered
        if self.listener is not None and not self.connections and self._served:
            self._close_listener()  # every ingest process of the host has gone: the work is done

    def _close_listener(self) -> None:
        assert self.listener is not None  # callers check
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]


class CommitterClient(asyncio.Protocol):
    """The ingest's side: `submit` returns a future of the queue id and the message's SHA-256.

    It connects to the host's committer at `address` (see `CommitterHost`)
    and, if the connection ends, answers what was in flight 451 and connects
    again: starting a new committer is the host's job, not the client's.
    """

    def __init__(self, address: str, *, counts: metrics.LoopCounts):
        self.address = address
        self._ids = itertools.count(1)
        self._pending: dict[
            int, asyncio.Future[tuple[str, str]]
        ] = {}  # its loop's commit-queue gauge: kept, never replaced
        counts.commit_queue = self._pending  # served at /metrics as this loop's commit queue
        self._buf = bytearray()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._closing = False
        # Set by start(): nothing uses them before.
        self._loop: asyncio.AbstractEventLoop
        self._ready: asyncio.Future[None]

    async def start(self, timeout: float = 120) -> None:
        """Connect to the committer and wait until it is ready to take messages."""
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.address)  # local: at once (uvloop cannot connect to an abstract address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        await self._loop.create_unix_connection(lambda: self, sock=sock)
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    def submit(
        self, envelope: Envelope, message: bytes | Path, sha256: str | None, size: int
    ) -> asyncio.Future[tuple[str, str]]:
        """Hand a message over; sha256 None for bytes, which the committer hashes."""
        future = self._loop.create_future()
        if self._transport is None:
            future.set_exception(CommitFailed("the committer is not running"))
            return future
        request_id = next(self._ids)
        self._pending[request_id] = future
        if not self._outgoing:  # one write for all that this turn of the loop hands over
            self._loop.call_soon(self._send)
        self._outgoing.append(frame((request_id, envelope.to_wire(), message, sha256, size)))
        return future

    def _send(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None:
            self._transport.writelines(outgoing)
        # else: connection_lost has failed their futures already

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream connection's transport, not BaseTransport
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for replies in unframe(self._buf):
            if not self._ready.done():
                self._ready.set_result(None)
            for request_id, queue_id, sha256, error in replies:
                future = self._pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                if error is None:
                    future.set_result((queue_id, sha256))
                else:
                    future.set_exception(CommitFailed(error))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._ready.done():
            self._ready.set_exception(CommitFailed("the committer stopped while starting"))
        pending = list(self._pending.values())
        self._pending.clear()
        self._outgoing = []
        for future in pending:
            if not future.done():
                future.set_exception(CommitFailed("the committer went away"))
        if not self._closing:
            log.error("the committer stopped; answering 451 until a new one is running")
            self._loop.call_later(RESTART_DELAY, lambda: asyncio.ensure_future(self._reconnect()))

    async def _reconnect(self) -> None:
        if self._closing:
            return
        self._buf.clear()
        try:
            await self.start(timeout=RECONNECT_TIMEOUT)
        except CommitFailed:
            pass  # it stopped again while starting: connection_lost has planned the next try
        except (OSError, TimeoutError):
            # No committer listening yet (the host restarts it after RESTART_DELAY): try again.
            if self._transport is not None:
                self._transport.close()  # connection_lost plans the next try
            else:
                self._loop.call_later(RESTART_DELAY, lambda: asyncio.ensure_future(self._reconnect()))

    def close(self) -> None:
        """Stop handing messages over: the committer commits and answers what it
        was given, and ends once every ingest process it serves has gone."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()


def spawn_committer(fd: int) -> subprocess.Popen[bytes]:
    """Start `python -m ingest.committer_process FD PARENT`, handing it listening socket `fd`."""
    command = [sys.executable, "-m", "ingest.committer_process", str(fd), str(os.getpid())]
    return subprocess.Popen(command, pass_fds=[fd], cwd=ROOT)


def yield_to_sessions(increment: int) -> None:
    """Lower the committer process's CPU priority by `increment` (nice(2)).

    The sessions' event loop answers every command of every session and is
    what a sender waits on; the committer works in batches, and a batch that
    starts a little later carries more messages for the same flush and
    transaction (figures in bench/README.md).  The kernel keeps a niced process running on an
    otherwise idle CPU, and under contention gives it a share (nice 5 beside
    one nice-0 process: about a quarter of the CPU), so it is never starved:
    a committer that falls behind takes larger batches and catches up."""
    if increment <= 0:
        return
    try:
        niceness = os.nice(increment)
    except OSError as exc:
        log.warning("committer: cannot lower its priority by %d: %s", increment, exc)
        return
    log.debug("committer: running at niceness %d", niceness)


def serve_fd(fd: int, parent: int) -> None:
    """The committer process's work (ingest/committer_process.py starts Django first):
    every ingest process that connects to listening socket `fd`, until `parent` says stop or dies."""
    # Stopping is the ingest's call: the committer ends when its sockets do,
    # after finishing what it was given, so Ctrl-C or SIGTERM to the process
    # group does not cut a batch short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    service = CommitService(listener=socket.socket(fileno=fd))
    # The host's word that every ingest process has ended (SIGUSR1), also sent
    # by the kernel if the host dies first, so no committer outlives its ingest.
    signal.signal(signal.SIGUSR1, lambda signum, frame: service.stop_listening.set())
    die_with_parent(signal.SIGUSR1, parent)
    service.run()


class CommitterHost:
    """The host's one committer, which every ingest process connects to.

    There is one way to run it: a `CommitService` listening on an abstract
    Unix socket.  `manage.py smtpd` runs it in a process of its own
    (`start_process`), restarted by the forking parent if it dies, while
    the ingest processes answer 451 and reconnect; the tests that run an
    ingest in a thread run it in a thread (`start_thread`).  One committer
    makes one batch and one flush of all the processes' messages: separate
    committers flushed the same filesystem each on their own, with batches
    half the size.
    """

    def __init__(self) -> None:
        self.address = f"\0archiva-committer-{os.getpid()}-{secrets.token_hex(8)}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen(64)
        self.process: subprocess.Popen[bytes] | None = None
        self._service: CommitService | None = None
        self._thread: threading.Thread | None = None

    def start_process(self) -> int:
        self.process = spawn_committer(self.listener.fileno())
        log.info("committer process %d started", self.process.pid)
        return self.process.pid

    def start_thread(self) -> None:
        """Serve in a thread of this process (tests: the test database and settings are this process's)."""
        self._service = CommitService(listener=socket.socket(fileno=os.dup(self.listener.fileno())))
        self._thread = threading.Thread(target=self._service.run, name="ingest-committer", daemon=True)
        self._thread.start()

    def exited(self, status: int) -> None:
        """The parent reaped the committer (os.wait): Popen must not wait for it again,
        or it could reap a later child that got the same pid."""
        assert self.process is not None  # started
        self.process.returncode = os.waitstatus_to_exitcode(status)

    def stop(self, timeout: float = 60) -> None:
        """Every ingest process has ended: the committer finishes what it has and exits."""
        if self._service is not None and self._thread is not None:
            self._service.stop_listening.set()
            self._thread.join(timeout)
        if self.process is not None and self.process.returncode is None:
            # os.kill, not Popen.send_signal: that polls, and a poll that reaps
            # the committer would leave the parent's os.wait() waiting for it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGUSR1)

    def close(self) -> None:
        self.listener.close()
