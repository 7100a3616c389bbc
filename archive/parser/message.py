"""Reading an RFC 5322 message's headers and parts without ever raising.

The `email` package builds the MIME tree (compat32 policy: tolerant and fast,
no header objects); header values are decoded here from their raw bytes so
that broken charsets and encoded words degrade to replacement characters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime

from archive.parser.rawmime import (
    MAX_HEADER_VALUE,
    decode_header_value,
    decode_text,
    decode_transfer,
    multipart_depth,
    to_bytes,
    unfold,
)

_MSGID = re.compile(r"<([^<>\s]{1,900})>")


MAX_MULTIPART_DEPTH = 30


def parse_message(raw: bytes) -> tuple[Message, list[str]]:
    """The MIME tree; a tree nested too deeply for the parser falls back to headers only."""
    single = _single_part(raw)  # not split into parts: no depth to fear
    if single is not None:
        return single, []
    depth = multipart_depth(raw, stop_above=MAX_MULTIPART_DEPTH)
    if depth > MAX_MULTIPART_DEPTH:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
        return msg, [
            f"MIME structure nested more than {MAX_MULTIPART_DEPTH} levels deep: parts not split, text read as found"
        ]
    try:
        return BytesParser(policy=policy.compat32).parsebytes(raw), []
    except RecursionError:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
        return msg, ["MIME structure nested too deeply: parts not split, text read as found"]


# The first empty line: two line endings in a row, each \r\n, \n or a lone \r.
_HEAD_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_MAX_FAST_HEAD = 256 * 1024


def _single_part(raw: bytes) -> Message | None:
    """A single-part message, as the `email` parser would give it, without
    feeding its body through the parser line by line (which was most of the
    parsing cost of a plain 20 kB message); None when the message is not one
    or when anything about its head is unusual, for the full parser.

    The parser's own header parsing reads the head; the body is then the
    parser's payload exactly when the head parses to its first empty line
    with nothing left over and no defect, and the type is neither multipart
    nor message/* (whose payloads the parser splits).  tests/test_parser_fast_path.py
    compares both on the corpus and on edge cases."""
    end = _HEAD_END.search(raw, 0, _MAX_FAST_HEAD)
    if end is None:
        return None
    msg = BytesParser(policy=policy.compat32).parsebytes(raw[: end.end()], headersonly=True)
    if msg.defects or msg.get_payload() or msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(raw[end.end() :].decode("ascii", "surrogateescape"))
    return msg


def raw_header(msg: Message, name: str, join: bool = False) -> bytes | None:
    """A header's raw bytes (all occurrences comma-joined when `join`), None when absent."""
    name = name.lower()
    values = []
    for key, value in msg.raw_items():
        if key.lower() == name:
            data = to_bytes(value if isinstance(value, str) else str(value))
            values.append(data[:MAX_HEADER_VALUE])
            if not join:
                break
    return b", ".join(values) if values else None


def header_text(msg: Message, name: str) -> str:
    value = raw_header(msg, name)
    return decode_header_value(value) if value is not None else ""


def addresses(value: bytes | str | None, limit: int = 1000) -> list[str]:
    """Lower-cased addr-specs of an address header; display names and groups ignored."""
    if not value:
        return []
    if isinstance(value, bytes):
        value = decode_text(unfold(value[:MAX_HEADER_VALUE]))
    simple = _simple_addr_specs(value)
    if simple is not None:
        return _kept(simple, limit)
    try:
        pairs = getaddresses([value])
    except (ValueError, IndexError, TypeError):
        return []
    return _kept([addr for _name, addr in pairs], limit)


# A list of plain `local@domain` or `Name <local@domain>` items, in ASCII,
# without quotes, comments, groups, routes or literals: what nearly every
# header and journal envelope line holds.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# One item: a bare addr-spec (group 1), or a display name (2) and an addr-spec in angle brackets (3).
_SIMPLE_ITEM = re.compile(rf"[ \t]*(?:({_ADDR_SPEC})|([A-Za-z0-9!#$%&'*+/=?^_`{{|}}~. \t-]*)<({_ADDR_SPEC})>)[ \t]*")


def _simple_addr_specs(value: str) -> list[str] | None:
    """The addr-specs of a simple address list, read without the `email`
    package's tokenizer (which was a third of the worker's parsing); None
    for anything else, which `getaddresses` reads.  tests/test_parser_fast_path.py
    checks both give the same addresses on generated and corpus values."""
    specs = []
    for item in value.split(","):
        if not item.strip(" \t"):
            continue
        match = _SIMPLE_ITEM.fullmatch(item)
        if match is None:
            return None
        specs.append(match.group(1) or match.group(3))
    return specs


def simple_pairs(value: str) -> list[tuple[str, str]] | None:
    """`getaddresses([value])` for a simple address list (its items the
    `_simple_addr_specs` kind, none empty): (display name, addr-spec) pairs,
    a name's words joined by single spaces as the `email` package joins
    them; None for anything else.  tests/test_parser_fast_path.py compares
    both on generated values."""
    pairs = []
    for item in value.split(","):
        match = _SIMPLE_ITEM.fullmatch(item)
        if match is None:
            return None
        bare, name, addr = match.groups()
        pairs.append(("", bare) if bare else (" ".join(name.split()), addr))
    return pairs


def _kept(addrs: list[str], limit: int) -> list[str]:
    found: list[str] = []
    for addr in addrs:
        addr = addr.strip().strip("<>").lower()
        if addr.startswith("smtp:"):
            addr = addr[5:]
        if addr and "@" in addr and " " not in addr and addr not in found:
            found.append(addr[:320])
            if len(found) >= limit:
                break
    return found


def message_id(value: bytes | str | None) -> str | None:
    """The first <id> without brackets; a bare token when the sender left them out."""
    if not value:
        return None
    text = decode_text(unfold(value[:4096])) if isinstance(value, bytes) else value[:4096]
    match = _MSGID.search(text)
    if match:
        return match.group(1)
    text = text.strip()
    return text if text and " " not in text and len(text) <= 900 else None


def parse_date(value: bytes | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(decode_text(unfold(value[:512])).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000": time zone unknown; the clock is UTC's by RFC 5322
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def part_filename(part: Message) -> str:
    """Content-Disposition filename or Content-Type name, RFC 2231 and (non-standard) RFC 2047 decoded."""
    try:
        name = part.get_filename()
    except (LookupError, ValueError, TypeError, UnicodeError):
        name = None
    if isinstance(name, str) and name:
        return decode_header_value(to_bytes(name))[:255]
    return ""


def part_charset(part: Message) -> str | None:
    try:
        charset = part.get_param("charset")
    except (ValueError, TypeError, IndexError):
        return None
    if isinstance(charset, tuple):
        charset = charset[2]
    return charset if isinstance(charset, str) else None


def part_payload(part: Message, max_bytes: int) -> tuple[bytes | None, int]:
    """(bytes with the transfer encoding undone, size); the bytes are None when over `max_bytes`.

    `get_payload(decode=True)` is the one stdlib call that returns 8-bit
    content as the bytes that arrived: without `decode` compat32 decodes them
    with the part's charset label, which loses bytes and raises on some labels.
    """
    # The stored, still-encoded text: get_payload() without decode would
    # decode 8-bit content with the charset label and can raise.
    encoded = part._payload  # type: ignore[attr-defined]  # noqa: SLF001 - typeshed leaves the stdlib's own out
    if not isinstance(encoded, str):
        return b"", 0
    # Decoding never grows a payload beyond this (base64 shrinks it by a
    # quarter): an oversized part is refused before it is decoded into memory.
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    estimate = len(encoded) * 3 // 4 if cte == "base64" else len(encoded)
    if estimate > max_bytes:
        return None, estimate
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - the stdlib's decoders meet hostile input here
        return b"", 0
    if not isinstance(data, bytes):
        return b"", 0
    if len(data) > max_bytes:
        return None, len(data)
    return data, len(data)


def part_payload_head(part: Message, max_bytes: int) -> bytes:
    """About the first `max_bytes` of a part's payload, transfer encoding undone,
    without decoding the rest: the start of a body too large to read whole."""
    encoded = part._payload  # type: ignore[attr-defined]  # noqa: SLF001 - see part_payload
    if not isinstance(encoded, str):
        return b""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower().encode()
    # base64 takes 4 characters (plus line breaks) for 3 bytes; quoted-printable at most 3 for 1.
    head = to_bytes(encoded[: max_bytes * 2 if cte == b"base64" else max_bytes * 3 if cte else max_bytes])
    if cte == b"base64":
        head = head[: head.rfind(b"\n") + 1] or head  # whole lines, so no quantum is cut
    return decode_transfer(head, cte)[:max_bytes]
