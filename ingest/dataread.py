"""Reading SMTP DATA in bulk, exactly as RFC 5321 says.

The session hands every chunk the socket gives it to `DataParser.feed`,
which writes message bytes to a sink (the spool file, hashed as it goes)
and ends DATA only on `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4).  A bare
`<LF>.<LF>`, `<CR>.<LF>` or `<LF>.<CR><LF>` is ordinary content, never an
end: that is what stops SMTP smuggling.  Dot-unstuffing (4.5.2) applies only
to a dot at the start of a CRLF-delimited line.  The parser keeps at most
four bytes between chunks, whatever the chunking.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ingest.tuning import DOT_PROBES, FAR_DOT, MEMORY_LIMIT, SMALL, THICK_WINDOW

if TYPE_CHECKING:
    from _hashlib import HASH

log = logging.getLogger(__name__)

END_MARK = b"\r\n."


def find_mark(buf: bytes, pos: int) -> int:
    """`buf.find(END_MARK, pos)`, found faster where dots are rare.

    bytes.find steps through the buffer a few bytes at a time for a
    three-byte pattern, a tenth of a message's Python time in the event
    loop; a single byte is found with memchr, forty times faster, and most
    of a journal report's bytes hold no dot at all (base64 attachments; the
    benchmark's bodies).  So this
    looks for dots and checks the two bytes before each.  Where dots come
    thick (headers, prose, HTML), DOT_PROBES of them in a row within
    FAR_DOT bytes of each other, bytes.find takes the next THICK_WINDOW
    bytes (twice as many each time until a far dot), never a probe per dot.
    Below SMALL bytes bytes.find runs alone (short reports are thick with
    dots).  The figures, and the price on prose and HTML, are in
    bench/README.md.
    """
    if len(buf) - pos < SMALL:
        return buf.find(END_MARK, pos)
    probes, window = DOT_PROBES, THICK_WINDOW
    while True:
        dot = buf.find(b".", pos + 2)  # a mark at i has its dot at i + 2
        if dot == -1:
            return -1
        if buf[dot - 2 : dot] == b"\r\n":
            return dot - 2  # the first mark: an earlier one would have an earlier dot
        if dot - pos > FAR_DOT:
            probes, window = DOT_PROBES, THICK_WINDOW
        else:
            probes -= 1
        pos = dot - 1  # marks from here on have their dot after this one
        if not probes:
            # Thick with dots: marks starting before pos + window, by bytes.find.
            stop = pos + window
            found = buf.find(END_MARK, pos, stop + 2)
            if found != -1 or stop + 2 >= len(buf):
                return found
            pos, probes, window = stop, DOT_PROBES, window * 2


class DataSink:
    """Where a message's bytes go, with their size (and, once spooled, their hash).

    Up to `memory_limit` bytes stay in memory: a journal report is mostly
    tens of kilobytes, and creating a file in the event loop would wait on
    the filesystem's journal.  A larger message spills to a file in
    `spool_dir`.  Past `limit` the sink only counts (the reply will be 552);
    a spool that cannot be written is kept in `error` (the reply will be 452).

    A message held in memory is not hashed here: the committer hashes it
    (`CommitService`), off the event loop, where SHA-256 was a sixth of the
    loop's CPU on CPUs without SHA instructions (bench/README.md).  A spooled message is hashed as it is
    written, so that nobody reads its file again for it.
    """

    def __init__(self, limit: int, spool_dir: Path | None = None, memory_limit: int = MEMORY_LIMIT):
        self.limit = limit
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit
        self.size = 0
        self.overflow = False
        self.error: OSError | None = None
        self.digest: HASH | None = None  # of a spooled message, from the spill on
        self.path: Path | None = None  # the spool file, once spilled
        self._chunks: list[bytes] = []
        self._out: BinaryIO | None = None

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            # Keep reading to the end of DATA (RFC 5321 4.2.5) but stop storing.
            self.overflow = True
            self._chunks = []
        if self.overflow or self.error is not None:
            return
        if self._out is None:
            if self.spool_dir is None or self.size <= self.memory_limit:
                self._chunks.append(bytes(data))
                return
            self._spill()
            if self._out is None:
                return
        assert self.digest is not None  # made with the spool file
        self.digest.update(data)
        try:
            self._out.write(data)
        except OSError as exc:
            # Same rule: read to the end, then refuse with a 4xx.
            self._fail(exc)

    def _spill(self) -> None:
        try:
            try:
                fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="in-", suffix=".eml")
            except FileNotFoundError:  # first spill, or the folder was removed: make it once
                assert self.spool_dir is not None  # write() spills only with one
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="in-", suffix=".eml")
            self.path = Path(name)
            self._out = os.fdopen(fd, "wb")
            self.digest = digest = hashlib.sha256()
            for chunk in self._chunks:
                digest.update(chunk)
                self._out.write(chunk)
            self._chunks = []
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        log.error("cannot write a spool file in %s: %s", self.spool_dir, exc)
        self.error = exc
        self.discard()

    def finish(self) -> bytes | Path | None:
        """The message: its bytes, or its spool file; None after overflow or an error."""
        if self._out is not None:
            try:
                self._out.close()
            except OSError as exc:
                self._fail(exc)
            self._out = None
        if self.overflow or self.error is not None:
            self.discard()
            return None
        if self.path is not None:
            return self.path
        content = b"".join(self._chunks)
        self._chunks = []
        return content

    def discard(self) -> None:
        """Forget the bytes; remove the spool file if there is one."""
        self._chunks = []
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    @property
    def sha256(self) -> str | None:
        """The SHA-256 of a spooled message; None for one held in memory (the committer hashes it)."""
        return self.digest.hexdigest() if self.digest is not None else None


class DataParser:
    """Push parser for one message's DATA: `feed` chunks until it returns the leftover."""

    def __init__(self, sink: DataSink):
        self.sink = sink
        # A virtual CRLF before the first byte: DATA starts at a line start,
        # so a first line of "." ends an empty message and "..x" is unstuffed.
        self._pending = b"\r\n"
        self._skip = 2  # bytes of the virtual CRLF not yet dropped

    def feed(self, chunk: bytes) -> bytes | None:
        """Take the next bytes of the stream; None while DATA goes on, else the
        bytes after the end mark (pipelined commands, possibly b"")."""
        buf = self._pending + chunk if self._pending else chunk
        pos = 0
        while True:
            i = find_mark(buf, pos)
            if i == -1:
                # Hold back a tail that might be the start of "\r\n.".
                keep = 2 if buf.endswith(b"\r\n") else (1 if buf.endswith(b"\r") else 0)
                cut = max(pos, len(buf) - keep)
                self._emit(buf, pos, cut)
                self._pending = buf[cut:]
                return None
            if len(buf) - i < 5:
                # "\r\n." near the end: two more bytes tell an end mark from a stuffed dot.
                self._emit(buf, pos, i)
                self._pending = buf[i:]
                return None
            self._emit(buf, pos, i + 2)
            if buf[i + 3 : i + 5] == b"\r\n":
                self._pending = b""
                return buf[i + 5 :]
            pos = i + 3  # a stuffed dot: drop it, keep the rest of the line

    def _emit(self, buf: bytes, start: int, end: int) -> None:
        if self._skip:
            dropped = min(self._skip, end - start)
            start += dropped
            self._skip -= dropped
        if end > start:
            self.sink.write(memoryview(buf)[start:end])
