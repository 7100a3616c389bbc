"""Reading attachments out of a stored original, for download.

The parser (`archive.parser.journal`) extracts text and metadata; downloads need
the bytes, which it does not keep.  The message view lists and the
download serves the same list, built here, so the numbers always agree.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import MIMEPart
from typing import Any

from archive.parser.message import MAX_MULTIPART_DEPTH
from archive.parser.rawmime import content_type, header, multipart_depth, parse_headers, split_head_body

# Nested messages are walked this deep; deeper ones are offered whole.
MAX_DEPTH = 8


@dataclass(frozen=True)
class Part:
    name: str
    content_type: str
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.payload)


def _filename(part: MIMEPart, number: int) -> str:
    try:
        name = part.get_filename()
    except Exception:  # a broken RFC 2231 parameter must not hide the part
        name = None
    name = (name or "").replace("/", "_").replace("\\", "_").strip()
    if name:
        return name
    extension = ".eml" if part.get_content_type() == "message/rfc822" else ".bin"
    return f"attachment-{number}{extension}"


def _payload(part: MIMEPart) -> bytes:
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        return part.as_bytes(policy=email.policy.default.clone(linesep="\r\n"))
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    return data if isinstance(data, bytes) else b""


def _is_attachment(part: MIMEPart) -> bool:
    if part.get_content_disposition() == "attachment":
        return True
    # Text without an attachment disposition is the body; any other leaf
    # (an inline image, a file without a disposition) is an attachment.
    return not part.is_multipart() and part.get_content_maintype() != "text"


def attachments(raw: bytes) -> list[Part]:
    """The attachments of a message, in document order; never raises on bad input.

    A multipart nested deeper than the parser takes apart has none to offer
    (the `email` package would take minutes over it): the .eml has it all.
    """
    if not _is_multipart(raw) or multipart_depth(raw, stop_above=MAX_MULTIPART_DEPTH) > MAX_MULTIPART_DEPTH:
        return []
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:
        return []
    found: list[Part] = []
    _walk(message, found, depth=0)
    return found


def attachment_list(raw: bytes) -> list[dict[str, Any]]:
    """What the message page lists of `attachments(raw)`: number (for the
    download URL), name, content type and size; kept on the Message."""
    return [
        {"n": number, "name": part.name, "content_type": part.content_type, "size": part.size}
        for number, part in enumerate(attachments(raw), start=1)
    ]


def _is_multipart(raw: bytes) -> bool:
    """Whether the top-level Content-Type is multipart (only then are there attachments)."""
    head, _ = split_head_body(raw)
    ctype, _ = content_type(header(parse_headers(head), "content-type"))
    return ctype.startswith(("multipart/", "message/"))


def _walk(part: MIMEPart, found: list[Part], depth: int) -> None:
    if not part.is_multipart():
        if depth > 0 and _is_attachment(part):
            found.append(Part(_filename(part, len(found) + 1), part.get_content_type(), _payload(part)))
        return
    for child in part.iter_parts() if depth < MAX_DEPTH else []:
        if child.get_content_type() == "message/rfc822":
            found.append(Part(_filename(child, len(found) + 1), "message/rfc822", _payload(child)))
        else:
            _walk(child, found, depth + 1)
