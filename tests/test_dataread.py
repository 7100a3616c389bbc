"""DATA framing: only <CRLF>.<CRLF> ends DATA, dot-unstuffing is exact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.dataread import DataParser, DataSink


def run(wire: bytes, chunk: int = 7, limit: int = 10**9):
    sink = DataSink(limit=limit)
    parser = DataParser(sink)
    parts = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    while parts:
        leftover = parser.feed(parts.pop(0))
        if leftover is not None:
            # What the parser returned plus what it was never fed: the next commands.
            content = sink.finish()
            return content or b"", leftover + b"".join(parts), sink
    raise AssertionError("the wire ended before the end mark")


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


def test_data_without_the_end_mark_is_still_going_on():
    sink = DataSink(limit=100)
    parser = DataParser(sink)
    assert parser.feed(b"no end here\r\n") is None
    assert parser.feed(b".") is None  # might be a stuffed dot or the end
    assert parser.feed(b"\r\nNOOP") == b"NOOP"
    assert sink.finish() == b"no end here\r\n"


def test_size_covers_exactly_the_content_and_a_message_in_memory_is_left_to_the_committer_to_hash():
    content, _, sink = run(b"hello\r\n..world\r\n.\r\n")
    assert sink.size == len(content) == len(b"hello\r\n.world\r\n")
    assert sink.sha256 is None


@pytest.mark.parametrize("memory_limit", [0, 10, 100])
def test_a_spooled_message_is_hashed_as_written_from_its_first_byte(tmp_path, memory_limit):
    """Spilled after some bytes were held in memory, the hash still covers them."""
    import hashlib

    body = b"".join(b"line %d\r\n" % n for n in range(40))
    sink = DataSink(limit=10**9, spool_dir=tmp_path, memory_limit=memory_limit)
    parser = DataParser(sink)
    for start in range(0, len(body), 7):
        assert parser.feed(body[start : start + 7]) is None
    assert parser.feed(b".\r\n") == b""
    spooled = sink.finish()
    assert isinstance(spooled, Path) and spooled.read_bytes() == body
    assert sink.size == len(body) and sink.sha256 == hashlib.sha256(body).hexdigest()


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


def test_a_large_message_spills_to_a_spool_file_and_a_dropped_one_leaves_nothing(tmp_path):
    wire = b"x" * 100 + b"\r\n" + b"y" * 100 + b"\r\n.\r\n"
    sink = DataSink(limit=10**6, spool_dir=tmp_path / "spool", memory_limit=64)
    assert DataParser(sink).feed(wire) == b""
    spooled = sink.finish()
    assert spooled.parent == tmp_path / "spool" and spooled.read_bytes() == wire[:-3]
    dropped = DataSink(limit=10**6, spool_dir=tmp_path / "spool", memory_limit=64)
    DataParser(dropped).feed(wire[:150])  # the connection ends inside DATA
    dropped.discard()
    assert sorted((tmp_path / "spool").iterdir()) == [spooled]


@pytest.mark.parametrize("tuning", [None, (1, 4, 8, 0), (2, 16, 32, 0), (3, 1, 4, 0), (2, 16, 32, 64)])
def test_find_mark_finds_exactly_what_bytes_find_finds(monkeypatch, tuning):
    """find_mark is bytes.find(END_MARK, pos), faster: checked on 3,000 random
    buffers of every density of dots, CRs and LFs, from every start, with the
    real tuning and with tiny ones that take every branch in short buffers."""
    import random

    from ingest import dataread

    if tuning is not None:
        for name, value in zip(("DOT_PROBES", "FAR_DOT", "THICK_WINDOW", "SMALL"), tuning, strict=True):
            monkeypatch.setattr(dataread, name, value)
    rng = random.Random(4)
    for _ in range(3000):
        alphabet = rng.choice([b"X.\r\n", b"X\r\n", b"XXXXXXXX.\r\n", b"XXXXXXXXXXXXXXXX\r\n.", b".\r\n", b"XY"])
        # Sizes past SMALL and THICK_WINDOW too, so the real tuning probes and opens windows.
        size = rng.choice([0, 1, 2, 3, 5, 17, 64, 300, 3000, 5000, 20000])
        buf = bytes(rng.choices(alphabet, k=size))
        if rng.random() < 0.3 and size:  # a mark somewhere, maybe far in
            at = rng.randrange(size)
            buf = buf[:at] + b"\r\n." + buf[at:]
        for pos in {0, 1, len(buf) // 2, max(0, len(buf) - 3), len(buf), rng.randrange(len(buf) + 1)}:
            assert dataread.find_mark(buf, pos) == buf.find(dataread.END_MARK, pos), (buf, pos)
