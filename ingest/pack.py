"""Packs: the messages of one commit batch for one tenant, stored as one object.

A file (or a PUT) per message made the ingest's committer spend most of its
time creating inodes and flushing them; a pack costs one object per tenant
per batch.  A pack is an object like any other: immutable, named by its own
SHA-256.  Each Delivery row records the pack's key and where its message's
bytes start (`storage_offset`, `size` bytes long); every read checks those
bytes against the message's own SHA-256.

The layout is text headers around the raw bytes, so a pack can be read and
checked without the database:

    ARCHIVA-PACK 1 <queue id> <sha256 of the message> <size>\\r\\n
    <size bytes: the message as received>\\r\\n

repeated for every message of the pack.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

MAGIC = b"ARCHIVA-PACK 1"
_HEADER = re.compile(rb"ARCHIVA-PACK 1 ([0-9A-Za-z]{1,32}) ([0-9a-f]{64}) ([0-9]{1,15})\r\n")


class Member(NamedTuple):
    queue_id: str
    sha256: str
    offset: int  # of the message's first byte in the pack
    size: int


class PackError(ValueError):
    """The bytes are not a well-formed pack."""


def build(messages: Iterable[tuple[str, str, bytes]]) -> tuple[bytes, list[int]]:
    """A pack of (queue id, sha256, bytes) messages, and the offset of each message's bytes."""
    parts: list[bytes] = []
    offsets: list[int] = []
    position = 0
    for queue_id, sha256, data in messages:
        header = b"%s %s %s %d\r\n" % (MAGIC, queue_id.encode("ascii"), sha256.encode("ascii"), len(data))
        position += len(header)
        offsets.append(position)
        parts += (header, data, b"\r\n")
        position += len(data) + 2
    return b"".join(parts), offsets


def members(data: bytes) -> Iterator[Member]:
    """The messages of a pack, in order; PackError where it is malformed or
    a message does not hash to its header's SHA-256."""
    position = 0
    while position < len(data):
        header = _HEADER.match(data, position)
        if header is None:
            raise PackError(f"no pack header at byte {position}")
        queue_id, sha256, size = header.group(1).decode(), header.group(2).decode(), int(header.group(3))
        start = header.end()
        end = start + size
        if data[end : end + 2] != b"\r\n":
            raise PackError(f"message {queue_id} at byte {start} is cut short")
        if hashlib.sha256(data[start:end]).hexdigest() != sha256:
            raise PackError(f"message {queue_id} at byte {start} does not match its sha256")
        yield Member(queue_id, sha256, start, size)
        position = end + 2
