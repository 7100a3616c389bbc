"""Packs: the committer stores the messages of a batch for one tenant as one object."""

from __future__ import annotations

import hashlib
import os

import pytest

from infra.storage import pack_key, raw_key
from ingest import pack


def message(n: int, size: int = 2000) -> tuple[str, str, bytes]:
    data = f"Subject: {n}\r\n\r\n".encode() + os.urandom(size)
    return f"Q{n:04d}", hashlib.sha256(data).hexdigest(), data


def test_a_pack_lists_its_messages_at_the_offsets_the_builder_returned():
    messages = [message(n, size) for n, size in enumerate([0, 1, 2000, 70000])]
    data, offsets, _ = pack.build(messages)
    found = list(pack.members(data))
    assert [(m.queue_id, m.sha256, m.size) for m in found] == [(q, s, len(d)) for q, s, d in messages]
    assert [m.offset for m in found] == offsets
    for (_, _, body), offset in zip(messages, offsets, strict=True):
        assert data[offset : offset + len(body)] == body


def test_a_message_that_looks_like_a_pack_header_stays_inside_its_member():
    body = b"ARCHIVA-PACK 1 Q9 " + b"0" * 64 + b" 5\r\nhello\r\n"
    data = pack.build([("Q1", hashlib.sha256(body).hexdigest(), body), message(2)]).data
    assert [m.queue_id for m in pack.members(data)] == ["Q1", "Q0002"]


def test_an_empty_pack_has_no_members():
    assert pack.build([]) == (b"", [], hashlib.sha256(b"").hexdigest())
    assert list(pack.members(b"")) == []
    assert pack.name_of(b"") == hashlib.sha256(b"").hexdigest()


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
    built = pack.build([message(1), message(2)])
    with pytest.raises(pack.PackError):
        list(pack.members(damage(built.data)))
    with pytest.raises(pack.PackError):
        pack.name_of(damage(built.data))
    assert not pack.matches_key(pack_key(built.name), damage(built.data))


def test_a_pack_is_named_by_its_index_and_every_byte_counts():
    """The name is the SHA-256 of the headers (each with its message's SHA-256):
    the same messages give the same name, any other byte another name or a PackError."""
    messages = [message(1), message(2, 5000)]
    built = pack.build(messages)
    headers = b"".join(built.data[:offset].rsplit(b"\r\n", 2)[-2] + b"\r\n" for offset in built.offsets)
    assert built.name == hashlib.sha256(headers).hexdigest() == pack.name_of(built.data)
    assert pack.build(messages) == built
    assert pack.matches_key(pack_key(built.name), built.data)
    assert pack_key(built.name) == f"pack/{built.name[:2]}/{built.name}"
    # Another queue id, another order, one message fewer: other names.
    assert pack.build([("Q9999", *messages[0][1:]), messages[1]]).name != built.name
    assert pack.build(messages[::-1]).name != built.name
    assert pack.build(messages[:1]).name != built.name
    # A pack is never taken for a message on its own, nor under another pack's name.
    assert not pack.matches_key(raw_key(built.name), built.data)
    assert not pack.matches_key(pack_key(pack.build(messages[:1]).name), built.data)
    body = messages[0][2]
    assert pack.matches_key(raw_key(hashlib.sha256(body).hexdigest()), body)
    assert not pack.matches_key("text/" + hashlib.sha256(body).hexdigest(), body)
