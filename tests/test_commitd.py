"""The socket protocol between an ingest process and its committer."""

from __future__ import annotations

from ingest.commitd import frame, unframe


def test_committer_frames_survive_any_split_of_the_stream():
    messages = [(1, b"x" * 70_000, "a"), (2, b"", None), (3, list(range(5)), {"k": "v"})]
    wire = b"".join(frame(m) for m in messages)
    for step in (1, 3, 4096, len(wire)):
        buf, got = bytearray(), []
        for start in range(0, len(wire), step):
            buf += wire[start : start + step]
            got.extend(unframe(buf))
        assert got == messages and not buf
