"""DATA framing: only <CRLF>.<CRLF> ends DATA, dot-unstuffing is exact."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.dataread import DataSink, read_data


class Chunks:
    def __init__(self, data: bytes, size: int):
        self.parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]

    async def read(self, n: int) -> bytes:
        return self.parts.pop(0) if self.parts else b""


class Buffer:
    def __init__(self):
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def run(wire: bytes, chunk: int = 7, limit: int = 10**9):
    out = Buffer()
    sink = DataSink(out=out, limit=limit)
    stream = Chunks(wire, chunk)
    leftover = asyncio.run(read_data(stream.read, sink))
    # What the reader returned plus what it never read: the next commands.
    return out.data, leftover + b"".join(stream.parts), sink


def reference(wire: bytes) -> tuple[bytes, bytes]:
    """RFC 5321 by the book: split into CRLF lines, stop at ".", unstuff."""
    lines, rest = [], wire
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, "no end mark"
        if line == b".":
            return b"".join(lines), rest
        lines.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


def test_message_ends_only_at_crlf_dot_crlf():
    content, leftover, _ = run(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert content == b"Subject: x\r\n\r\nbody\r\n"
    assert leftover == b"QUIT\r\n"


def test_smuggling_sequences_do_not_end_data():
    for fake_end in (b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"):
        wire = b"a: b\r\n\r\nbefore" + fake_end + b"MAIL FROM:<evil@x>\r\nafter\r\n.\r\n"
        content, leftover, _ = run(wire, chunk=3)
        assert b"MAIL FROM:<evil@x>" in content, fake_end
        assert leftover == b"", fake_end


def test_leading_dots_are_unstuffed_only_at_line_start():
    content, _, _ = run(b"..one\r\nx..two\r\n...\r\n.\r\n")
    assert content == b".one\r\nx..two\r\n..\r\n"


def test_empty_message_is_empty():
    content, leftover, _ = run(b".\r\nRSET\r\n")
    assert content == b"" and leftover == b"RSET\r\n"


def test_over_the_limit_keeps_reading_to_the_end_but_stores_nothing_more():
    content, leftover, sink = run(b"x" * 100 + b"\r\n.\r\nNOOP\r\n", limit=50)
    assert sink.overflow and leftover == b"NOOP\r\n"
    assert len(content) <= 50


def test_end_of_stream_before_the_end_mark_is_an_error():
    import pytest

    with pytest.raises(ConnectionResetError):
        run(b"no end here\r\n")


def test_hash_and_size_cover_exactly_the_content():
    import hashlib

    content, _, sink = run(b"hello\r\n..world\r\n.\r\n")
    assert sink.size == len(content)
    assert sink.sha256 == hashlib.sha256(content).hexdigest()


lines = st.lists(
    st.binary(max_size=12).map(lambda b: re.sub(rb"\r\n", b"", b)).filter(lambda b: b != b"."),
    max_size=20,
)


@settings(max_examples=400, deadline=None)
@given(lines=lines, chunk=st.integers(min_value=1, max_value=9), tail=st.binary(max_size=10))
def test_bulk_reader_agrees_with_line_by_line_reading(lines, chunk, tail):
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire = stuffed + b".\r\n" + tail
    content, leftover, _ = run(wire, chunk=chunk)
    assert (content, leftover) == reference(wire)
    assert content == b"".join(line + b"\r\n" for line in lines)
