"""Packs: the messages of one commit batch for one tenant, stored as one object.

A file (or a PUT) per message made the ingest's committer spend most of its
time creating inodes and flushing them; a pack costs one object per tenant
per batch.  A pack is immutable like any object.  Each Delivery row records
the pack's key and where its message's bytes start (`storage_offset`, `size`
bytes long); every read checks those bytes against the message's own SHA-256.

A pack is named by the SHA-256 of its index, the concatenation of its
headers, each of which carries its message's SHA-256 (a hash tree of one
level, as git names a tree by its entries' hashes).  The name still follows
from every byte of the pack, and changes with any of them, but the
committer need not hash the messages a second time: SHA-256 of the whole
pack was a sixth of the committer's CPU on CPUs without SHA instructions.  `name_of` checks a pack against its name
without the database.

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


class Built(NamedTuple):
    data: bytes
    offsets: list[int]  # of each message's first byte, in the order given
    name: str  # the SHA-256 of the pack's index


class PackError(ValueError):
    """The bytes are not a well-formed pack."""


def build(messages: Iterable[tuple[str, str, bytes]]) -> Built:
    """A pack of (queue id, sha256, bytes) messages, each sha256 that of its bytes
    (the caller hashed them as they arrived): the pack, its offsets and its name."""
    parts: list[bytes] = []
    offsets: list[int] = []
    index = hashlib.sha256()
    position = 0
    for queue_id, sha256, data in messages:
        header = b"%s %s %s %d\r\n" % (MAGIC, queue_id.encode("ascii"), sha256.encode("ascii"), len(data))
        index.update(header)
        position += len(header)
        offsets.append(position)
        parts += (header, data, b"\r\n")
        position += len(data) + 2
    return Built(b"".join(parts), offsets, index.hexdigest())


def members(data: bytes) -> Iterator[Member]:
    """The messages of a pack, in order; PackError where it is malformed or
    a message does not hash to its header's SHA-256."""
    for member, _ in _scan(data):
        yield member


def name_of(data: bytes) -> str:
    """The name of a well-formed pack whose every message matches its header
    (PackError otherwise): a pack stored under another name is not that pack."""
    index = hashlib.sha256()
    for _, header in _scan(data):
        index.update(header)
    return index.hexdigest()


def _scan(data: bytes) -> Iterator[tuple[Member, bytes]]:
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
        yield Member(queue_id, sha256, start, size), header.group(0)
        position = end + 2


def matches_key(key: str, data: bytes) -> bool:
    """Whether an object the ingest stored holds the bytes its key names: a
    pack (`pack/..`) its index, a message on its own (`raw/..`) its SHA-256."""
    top, _, name = key.partition("/")
    name = name.rpartition("/")[2]
    if top == "pack":
        try:
            return name_of(data) == name
        except PackError:
            return False
    return top == "raw" and hashlib.sha256(data).hexdigest() == name
