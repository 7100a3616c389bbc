"""Packs: the committer stores the messages of a batch for one tenant as one object."""

from __future__ import annotations

import hashlib
import os

import pytest

from ingest import pack


def message(n: int, size: int = 2000) -> tuple[str, str, bytes]:
    data = f"Subject: {n}\r\n\r\n".encode() + os.urandom(size)
    return f"Q{n:04d}", hashlib.sha256(data).hexdigest(), data


def test_a_pack_lists_its_messages_at_the_offsets_the_builder_returned():
    messages = [message(n, size) for n, size in enumerate([0, 1, 2000, 70000])]
    data, offsets = pack.build(messages)
    found = list(pack.members(data))
    assert [(m.queue_id, m.sha256, m.size) for m in found] == [(q, s, len(d)) for q, s, d in messages]
    assert [m.offset for m in found] == offsets
    for (_, _, body), offset in zip(messages, offsets, strict=True):
        assert data[offset : offset + len(body)] == body


def test_a_message_that_looks_like_a_pack_header_stays_inside_its_member():
    body = b"ARCHIVA-PACK 1 Q9 " + b"0" * 64 + b" 5\r\nhello\r\n"
    data, _ = pack.build([("Q1", hashlib.sha256(body).hexdigest(), body), message(2)])
    assert [m.queue_id for m in pack.members(data)] == ["Q1", "Q0002"]


def test_an_empty_pack_has_no_members():
    assert pack.build([]) == (b"", [])
    assert list(pack.members(b"")) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-3],  # cut short
        lambda data: b"X" + data[1:],  # no header
        lambda data: data[:200] + bytes([data[200] ^ 1]) + data[201:],  # a flipped bit in a message
    ],
    ids=["cut-short", "bad-header", "flipped-bit"],
)
def test_a_damaged_pack_is_reported(damage):
    data, _ = pack.build([message(1), message(2)])
    with pytest.raises(pack.PackError):
        list(pack.members(damage(data)))
