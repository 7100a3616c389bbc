"""What unwrapping a stored journal report yields (the parser's contract).

`archive.parser.journal.parse_report(raw: bytes) -> ParsedReport` never raises on
bad input: problems go into `ParsedReport.problems` and whatever could be
read is returned; the raw bytes stay in the bucket regardless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class EnvelopeRecipient:
    """A recipient from the MS-XJRNL envelope part (the only source of Bcc)."""

    address: str  # lower-cased addr-spec
    kind: str  # "to", "cc", "bcc" or "recipient" (Exchange 2003 / unknown field)
    expanded: str | None = None  # the distribution group it was expanded from
    forwarded: str | None = None  # the address it was forwarded from


@dataclass
class Attachment:
    filename: str
    content_type: str
    size: int
    text: str = ""  # extracted text, bounded in size
    skipped: str = ""  # why no text was extracted ("" when extracted or not applicable)


@dataclass
class ParsedReport:
    is_journal: bool  # False: archived as itself (e.g. connector validation)
    original: bytes  # the original message's bytes (the whole input when not a journal report)
    decrypted: bytes | None = None  # decrypted copy of a rights-protected original
    envelope_sender: str | None = None
    on_behalf_of: str | None = None
    envelope_recipients: list[EnvelopeRecipient] = field(default_factory=list)
    message_id: str | None = None  # the original's Message-ID without <>
    subject: str = ""
    from_addresses: list[str] = field(default_factory=list)  # lower-cased
    from_display: str = ""  # "Alice Example <alice@contoso.com>"
    to: list[str] = field(default_factory=list)  # header To, lower-cased addresses
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)  # header Bcc, rarely present
    date: datetime | None = None  # aware, UTC; None when missing or unparseable
    body_text: str = ""  # plain text, HTML converted, bounded in size
    body_html: str | None = None  # the original HTML body, unsanitized (sanitize before showing)
    attachments: list[Attachment] = field(default_factory=list)
    content_sha256: str = ""  # SHA-256 of `original`: the dedupe key when there is no Message-ID
    problems: list[str] = field(default_factory=list)
    # A calendar event's or a contact's own fields (archive.parser.items); {} for mail.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def has_attachments(self) -> bool:
        return bool(self.attachments)
