"""Unwrap an Exchange envelope journal report (MS-XJRNL) into a ParsedReport.

`parse_report(raw)` never raises: what cannot be read is listed in
`.problems` and the rest is returned.  The report's structure (envelope part,
original, decrypted copy) is sliced from the raw bytes by boundary, so a
`message/rfc822` part sent with `Content-Transfer-Encoding: binary` comes out
byte for byte; only the original (or its decrypted copy) goes through the
`email` package.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field

from archive.parser.extract import Extractor
from archive.parser.limits import DEFAULT_LIMITS, Limits
from archive.parser.message import addresses, header_text, message_id, parse_date, parse_message, raw_header
from archive.parser.parsed import EnvelopeRecipient, ParsedReport
from archive.parser.rawmime import (
    content_type,
    decode_header_value,
    decode_text,
    decode_transfer,
    header,
    parse_headers,
    split_head_body,
    split_multipart,
)
from archive.parser.sandbox import Sandbox

log = logging.getLogger(__name__)

_MESSAGE_TYPES = ("message/rfc822", "message/global")
_RECIPIENT_FIELDS = {"to": "to", "cc": "cc", "bcc": "bcc", "recipient": "recipient", "recipients": "recipient"}
_QUALIFIER = re.compile(r",\s*(expanded|forwarded)\s*:", re.IGNORECASE)
_MAX_ENVELOPE_RECIPIENTS = 100_000


@dataclass
class Envelope:
    """The MS-XJRNL envelope part: who Exchange actually delivered to."""

    sender: str | None = None
    on_behalf_of: str | None = None
    subject: str = ""
    message_id: str | None = None
    recipients: list[EnvelopeRecipient] = field(default_factory=list)


def parse_report(
    raw: bytes, *, limits: Limits = DEFAULT_LIMITS, sandbox: Sandbox | None = None, unwrap: bool = True
) -> ParsedReport:
    """The original message of a journal report, its envelope and its text.

    Mail that is not a journal report is returned as itself (`is_journal`
    False, `original` the input), and so is any mail with `unwrap` False: a
    mailbox's copy is the message itself, even one that is a journal report
    (kept in someone's mailbox).  Never raises on any input.
    """
    raw = bytes(raw)
    try:
        return _parse(raw, limits, sandbox, unwrap)
    except Exception as exc:  # a bug of ours must not lose the message: the raw bytes stay archived
        log.exception("journal parser failed")
        report = ParsedReport(is_journal=False, original=raw, content_sha256=hashlib.sha256(raw).hexdigest())
        report.problems.append(f"parser failure: {type(exc).__name__}: {str(exc)[:200]}")
        return report


def _parse(raw: bytes, limits: Limits, sandbox: Sandbox | None, unwrap: bool) -> ParsedReport:
    head, body = split_head_body(raw)
    fields = parse_headers(head)
    report = ParsedReport(is_journal=unwrap and is_journal_report(fields), original=raw)
    envelope = Envelope()
    if report.is_journal:
        envelope = _unwrap(report, fields, body)
        report.envelope_sender = envelope.sender
        report.on_behalf_of = envelope.on_behalf_of
        report.envelope_recipients = envelope.recipients
    report.content_sha256 = hashlib.sha256(report.original).hexdigest()
    _read_message(report, envelope, limits, sandbox)
    return report


def is_journal_report(fields: list[tuple[str, bytes]]) -> bool:
    """Exchange 2007+ marks reports with X-MS-Journal-Report, Exchange 2003 with Content-Identifier."""
    for name, value in fields:
        if name == "x-ms-journal-report":
            return True
        if name == "content-identifier" and value.strip().lower() == b"exjournalreport":
            return True
    return False


def _unwrap(report: ParsedReport, fields: list[tuple[str, bytes]], body: bytes) -> Envelope:
    """Find the envelope part, the original and the decrypted copy; set report.original/decrypted."""
    envelope = Envelope()
    ctype, params = content_type(header(fields, "content-type"))
    if not ctype.startswith("multipart/") or not params.get("boundary"):
        report.problems.append("journal report is not multipart: archived as itself")
        return envelope
    parts, closed = split_multipart(body, params["boundary"])
    if not closed:
        report.problems.append("journal report truncated: no closing boundary")
    messages: list[bytes] = []
    envelope_seen = False
    for part in parts:
        part_head, part_body = split_head_body(part)
        part_fields = parse_headers(part_head)
        part_type, part_params = content_type(header(part_fields, "content-type"))
        data = decode_transfer(part_body, header(part_fields, "content-transfer-encoding"))
        if part_type in _MESSAGE_TYPES:
            messages.append(data)
        elif part_type == "text/plain" and not envelope_seen and not messages:
            envelope = parse_envelope(decode_text(data, part_params.get("charset")))
            envelope_seen = True
        else:
            report.problems.append(f"unexpected {part_type} part in the journal report: ignored")
    if not envelope_seen:
        report.problems.append("journal report without an envelope part")
    if not messages:
        report.problems.append("journal report without the original message: archived as itself")
        return envelope
    report.original = messages[0]
    if len(messages) > 1:
        report.decrypted = messages[1]
    if len(messages) > 2:
        report.problems.append(f"{len(messages) - 2} further message parts in the journal report: ignored")
    return envelope


def parse_envelope(text: str) -> Envelope:
    """Lines `Field: value`; recipients may carry `, Expanded: <group>` and `, Forwarded: <addr>`."""
    envelope = Envelope()
    seen: set[tuple[str, str, str | None, str | None]] = set()
    for line in _logical_lines(text):
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if not colon:
            continue
        if key == "sender":
            envelope.sender = _first_address(value)
        elif key == "on-behalf-of":
            envelope.on_behalf_of = _first_address(value)
        elif key == "subject":
            envelope.subject = decode_header_value(value.encode("utf-8", "replace"))
        elif key == "message-id":
            envelope.message_id = message_id(value)
        elif key in _RECIPIENT_FIELDS and len(envelope.recipients) < _MAX_ENVELOPE_RECIPIENTS:
            for recipient in _recipients(_RECIPIENT_FIELDS[key], value):
                identity = (recipient.address, recipient.kind, recipient.expanded, recipient.forwarded)
                if identity not in seen:
                    seen.add(identity)
                    envelope.recipients.append(recipient)
    return envelope


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        elif line.strip():
            lines.append(line.strip())
    return lines


def _recipients(kind: str, value: str) -> list[EnvelopeRecipient]:
    """`a@x`, `a@x, Expanded: g@x`, `a@x, Forwarded: b@x` (both qualifiers may appear)."""
    pieces = _QUALIFIER.split(value)
    qualifiers: dict[str, str | None] = {"expanded": None, "forwarded": None}
    for word, target in zip(pieces[1::2], pieces[2::2], strict=False):
        qualifiers[word.lower()] = _first_address(target) or target.strip().lower() or None
    return [EnvelopeRecipient(address=address, kind=kind, **qualifiers) for address in addresses(pieces[0])]


def _first_address(value: str) -> str | None:
    found = addresses(value, limit=1)
    return found[0] if found else None


def _read_message(report: ParsedReport, envelope: Envelope, limits: Limits, sandbox: Sandbox | None) -> None:
    """Header fields from the original; subject, body and attachments from the decrypted copy when there is one."""
    original, problems = parse_message(report.original)
    report.problems += problems
    report.message_id = message_id(raw_header(original, "message-id")) or envelope.message_id
    report.from_addresses = addresses(raw_header(original, "from", join=True)) or (
        [envelope.sender] if envelope.sender else []
    )
    report.from_display = header_text(original, "from")[:1000]
    report.to = addresses(raw_header(original, "to", join=True))
    report.cc = addresses(raw_header(original, "cc", join=True))
    report.bcc = addresses(raw_header(original, "bcc", join=True))
    report.date = parse_date(raw_header(original, "date"))
    readable = original
    if report.decrypted is not None:
        readable, problems = parse_message(report.decrypted)
        report.problems += problems
        report.date = report.date or parse_date(raw_header(readable, "date"))
    content = Extractor(limits, sandbox).message(readable)
    report.subject = content.subject or header_text(original, "subject") or envelope.subject
    report.body_text = content.body_text
    report.body_html = content.body_html
    report.attachments = content.attachments
    report.problems += content.problems
