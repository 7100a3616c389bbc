"""Reading SMTP DATA in bulk, exactly as RFC 5321 says.

aiosmtpd reads DATA a line at a time into memory.  We read the stream in
large chunks straight into a spool file, hashing as we go, and end DATA
only on `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4).  A bare `<LF>.<LF>`,
`<CR>.<LF>` or `<LF>.<CR><LF>` is ordinary content, never an end: that
is what stops SMTP smuggling.  Dot-unstuffing (4.5.2) applies only to a
dot at the start of a CRLF-delimited line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

END_MARK = b"\r\n."
READ_SIZE = 256 * 1024


class DataTooLarge(Exception):
    pass


@dataclass
class DataSink:
    """Where message bytes go: a file, the running hash and the size."""

    out: BinaryIO | None
    limit: int
    size: int = 0
    overflow: bool = False
    error: OSError | None = None  # the spool could not be written (e.g. disk full)
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            # Keep reading to the end of DATA (RFC 5321 4.2.5) but stop
            # storing: the reply will be 552.
            self.overflow = True
        if self.overflow or self.error is not None or self.out is None:
            return
        try:
            self.out.write(data)
        except OSError as exc:
            # Same rule: read to the end, then refuse with a 4xx.
            self.error = exc
            return
        self.digest.update(data)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


async def read_data(
    read: Callable[[int], Awaitable[bytes]],
    sink: DataSink,
    on_progress: Callable[[], None] | None = None,
) -> bytes:
    """Copy DATA from `read` into `sink`; return bytes read past the end mark.

    `read(n)` returns up to n bytes and b"" at end of stream; an end of
    stream before `<CRLF>.<CRLF>` raises ConnectionResetError and nothing
    must be kept.  The returned leftover belongs to the next command
    (PIPELINING).
    """
    # A virtual CRLF before the first byte: DATA starts at a line start, so
    # a first line of "." ends an empty message and "..x" is unstuffed.
    buf = b"\r\n"
    skip = 2  # the virtual CRLF is not content
    while True:
        i = buf.find(END_MARK)
        if i == -1:
            # Keep a tail that might be the start of "\r\n.".
            keep = 2 if buf.endswith(b"\r\n") else (1 if buf.endswith(b"\r") else 0)
            cut = len(buf) - keep
            skip = _emit(sink, buf[:cut], skip)
            buf = buf[cut:]
        elif len(buf) - i >= 5:
            skip = _emit(sink, buf[: i + 2], skip)
            if buf[i + 3 : i + 5] == b"\r\n":
                return buf[i + 5 :]
            buf = buf[i + 3 :]  # a stuffed dot: drop it, keep the rest
            continue
        else:
            # "\r\n." near the end of the buffer: need two more bytes to tell
            # an end mark from a stuffed dot.
            skip = _emit(sink, buf[:i], skip)
            buf = buf[i:]
        chunk = await read(READ_SIZE)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        if on_progress is not None:
            on_progress()
        buf += chunk


def _emit(sink: DataSink, data: bytes, skip: int) -> int:
    if skip:
        dropped = min(skip, len(data))
        data = data[dropped:]
        skip -= dropped
    sink.write(data)
    return skip
