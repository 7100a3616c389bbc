"""From a parsed report to a Message's fields, and from a Message to its SearchDocument.

Pure functions, plus reading a message's stored objects back from the
tenant's bucket (hash-verified): the index can always be rebuilt from the
bucket and the Message rows, without the old index.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any

from archive import items
from archive.models import Message
from archive.parser import mime
from archive.parser.message import simple_pairs
from archive.parser.parsed import Attachment, EnvelopeRecipient, ParsedReport
from infra.storage import get_store
from infra.text import storable
from search.document import SearchDocument

if TYPE_CHECKING:
    from archive.parser.extract import Content as ExtractedContent

# Postgres indexes keys up to ~2.7 kB; a longer Message-ID is keyed by its hash.
MAX_MERGE_KEY = 280


def merge_key(parsed: ParsedReport) -> str:
    """`mid:<Message-ID>`, or `sha:<SHA-256 of the original>` when there is none."""
    return message_id_key(parsed.message_id) or f"sha:{original_sha256(parsed)}"


def message_id_key(message_id: str | None) -> str | None:
    """The merge key of a Message-ID (`mid:…`); None for none."""
    message_id = (message_id or "").strip().strip("<>").strip()
    if not message_id:
        return None
    key = f"mid:{message_id}"
    if len(key) > MAX_MERGE_KEY:
        key = f"mid-sha:{hashlib.sha256(message_id.encode('utf-8', 'surrogateescape')).hexdigest()}"
    return key


def original_sha256(parsed: ParsedReport) -> str:
    """The parser's hash of the original (`content_sha256`), computed here when a caller built the report itself."""
    return parsed.content_sha256 or hashlib.sha256(parsed.original).hexdigest()


def envelope_dicts(recipients: list[EnvelopeRecipient]) -> list[dict[str, Any]]:
    return [
        {"address": r.address.lower(), "kind": r.kind, "expanded": r.expanded, "forwarded": r.forwarded}
        for r in recipients
        if r.address
    ]


def union_recipients(current: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recipients of every report, each once, in the order first seen."""
    seen = {_recipient_key(r) for r in current}
    merged = list(current)
    for recipient in new:
        if _recipient_key(recipient) not in seen:
            seen.add(_recipient_key(recipient))
            merged.append(recipient)
    return merged


def _recipient_key(recipient: dict[str, Any]) -> tuple[Any, ...]:
    return (recipient.get("address"), recipient.get("kind"), recipient.get("expanded"), recipient.get("forwarded"))


def union_list(current: list[str], new: list[str]) -> list[str]:
    return list(dict.fromkeys([*current, *new]))


def _address(value: str | None) -> str:
    """The bare lower-cased address of "Name <a@b>" or "a@b"."""
    if not value:
        return ""
    pairs = _pairs(value)
    return (pairs[0][1] if pairs else value).strip().lower()


def participants(message: Message) -> list[str]:
    """Who may see the message as a plain user: the sender (From, Sender,
    On-Behalf-Of), header To/Cc/Bcc, every envelope recipient with the
    group it was expanded from and the address it was forwarded from, and
    the owner of every mailbox holding a copy (`mailboxes`): mail in my
    mailbox is mine to see, whoever it was addressed to."""
    return participants_of({name: getattr(message, name) for name in _PARTICIPANT_FIELDS})


_PARTICIPANT_FIELDS = (
    "mailboxes", "from_addresses", "envelope_sender", "on_behalf_of", "to", "cc", "bcc", "envelope_recipients",
)  # fmt: skip


def participants_of(fields: dict[str, Any]) -> list[str]:
    """`participants` of a Message's column values (no model instance to build)."""
    found = [*fields["mailboxes"], *fields["from_addresses"]]
    found += [_address(fields["envelope_sender"]), _address(fields["on_behalf_of"])]
    found += [*fields["to"], *fields["cc"], *fields["bcc"]]
    for r in fields["envelope_recipients"]:
        found += [r.get("address"), r.get("expanded"), r.get("forwarded")]
    return sorted({a.strip().lower() for a in found if a and "@" in a})


def attachment_dicts(attachments: list[Attachment]) -> list[dict[str, Any]]:
    return [
        {"name": a.filename, "content_type": a.content_type, "size": a.size, "skipped": a.skipped} for a in attachments
    ]


def message_fields(parsed: ParsedReport, received_at: datetime) -> dict[str, Any]:
    """The Message columns a freshly parsed report gives (before storing).

    Every text is storable (`infra.text`): a NUL a sender put in a subject,
    an address or a name must not fail the batch it is archived in.
    """
    fields: dict[str, Any] = {
        "merge_key": merge_key(parsed),
        "message_id": (parsed.message_id or "").strip().strip("<>"),
        "subject": parsed.subject or "",
        "from_display": parsed.from_display or ", ".join(parsed.from_addresses),
        "from_addresses": [a.lower() for a in parsed.from_addresses],
        "envelope_sender": _address(parsed.envelope_sender),
        "on_behalf_of": _address(parsed.on_behalf_of),
        "to": [a.lower() for a in parsed.to],
        "cc": [a.lower() for a in parsed.cc],
        "bcc": [a.lower() for a in parsed.bcc],
        "envelope_recipients": union_recipients([], envelope_dicts(parsed.envelope_recipients)),
        "date": parsed.date or received_at,
        "size": len(parsed.original),
        "has_attachments": parsed.has_attachments,
        "attachments": attachment_dicts(parsed.attachments),
        # What the page lists and serves: from what people read, as `read_readable` gives it.
        "attachment_list": mime.attachment_list(parsed.decrypted or parsed.original),
        "problems": list(parsed.problems)[:50],
        "mailboxes": [],
    }
    fields = storable(fields)
    fields["participants"] = participants_of(fields)
    return fields


def item_fields(
    fields: dict[str, Any], parsed: ParsedReport, kind: str, mailbox: str, received: datetime | None = None
) -> dict[str, Any]:
    """A mailbox item's Message columns, from `message_fields` of its parsed bytes.

    Its mailbox's owner becomes a participant; without a date of its own (no
    Date header, a contact) it is dated when the mailbox received it, not
    when we did.  Mail keeps its Message-ID key, so it merges with its
    journal copies; an event or a contact merges only with identical bytes
    (the same item in another mailbox, or stored again): each changed
    version of an item is an item of its own.
    """
    # An uploaded message (no mailbox) is seen by the participants its headers name.
    fields = {**fields, "kind": kind, "mailboxes": [mailbox] if mailbox else []}
    if parsed.date is None and received is not None:
        fields["date"] = received
    if kind != Message.Kind.MAIL:
        fields["merge_key"] = f"{kind}-sha:{original_sha256(parsed)}"
        fields["message_id"] = ""
        fields["attachment_list"] = []
        fields["details"] = storable(parsed.details)
    fields["participants"] = participants_of(fields)
    return fields


# --- the searchable content -------------------------------------------------


@dataclass
class Content:
    """What a message says: the decrypted copy's when there is one."""

    body: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    body_html: str | None = None


def content_of(parsed: ParsedReport) -> Content:
    """The content of a just-parsed report, as `load_content` would read it back."""
    if parsed.decrypted:
        return _content(_parse(parsed.decrypted))
    return _content(parsed)


def _content(parsed: ParsedReport) -> Content:
    return Content(body=parsed.body_text or "", attachments=list(parsed.attachments), body_html=parsed.body_html)


def _parse(raw: bytes, kind: str = Message.Kind.MAIL) -> ParsedReport:
    from archive.parser import items as item_parser
    from archive.parser.journal import parse_report

    if kind == Message.Kind.EVENT:
        return item_parser.parse_event(raw)
    if kind == Message.Kind.CONTACT:
        return item_parser.parse_contact(raw)
    return parse_report(raw)


OBJECTS = ("original", "decrypted", "text")  # a Message's objects: <name>_key, _sha256, _offset, _size


def read_object(message: Message, name: str) -> bytes:
    """One of the message's objects (`OBJECTS`) from the tenant's bucket,
    checked against its SHA-256: a whole object, or its range of a pack."""
    return get_store().read_verified(
        message.tenant.bucket,
        getattr(message, f"{name}_key"),
        getattr(message, f"{name}_sha256"),
        getattr(message, f"{name}_offset") or 0,
        getattr(message, f"{name}_size"),
    )


def read_original(message: Message) -> bytes:
    """The original's bytes from the tenant's bucket, checked against its SHA-256."""
    return read_object(message, "original")


def read_readable(message: Message) -> bytes:
    """What people read: the decrypted copy of a rights-protected original, else the original."""
    if message.has_decrypted:
        return read_object(message, "decrypted")
    return read_original(message)


def body_for_display(raw: bytes) -> ExtractedContent:
    """The body of a stored (decrypted) original for the message page, and
    why it could not be read in full (`body_note`): the body parts only,
    attachments neither decoded nor read (their list is on the Message)."""
    from archive.parser.extract import Extractor
    from archive.parser.message import parse_message

    msg, _problems = parse_message(raw)
    return Extractor(bodies_only=True).message(msg)


def load_content(message: Message) -> Content:
    """Re-parse the stored (decrypted) original: the index is rebuilt from the bucket."""
    return _content(_parse(read_readable(message), message.kind))


def content_json(content: Content) -> bytes:
    """The extracted text as stored beside the original (what indexing needs, no HTML)."""
    attachments = [
        {"name": a.filename, "content_type": a.content_type, "size": a.size, "text": a.text, "skipped": a.skipped}
        for a in content.attachments
    ]
    return json.dumps({"v": 1, "body": content.body, "attachments": attachments}, ensure_ascii=False).encode()


def stored_content(message: Message) -> Content:
    """The extracted text from the bucket (hash-verified), or a fresh parse when there is none."""
    if not message.text_key:
        return load_content(message)
    data = json.loads(read_object(message, "text"))
    attachments = [
        Attachment(a["name"], a["content_type"], a["size"], text=a.get("text", ""), skipped=a.get("skipped", ""))
        for a in data.get("attachments", [])
    ]
    return Content(body=data.get("body", ""), attachments=attachments)


def build_document(
    message: Message, content: Content | None = None, folders: list[str] | None = None
) -> SearchDocument:
    """The search document of a message; its text is read from the bucket
    unless given, its folders (`folder_values`) from its sources unless given."""
    content = content if content is not None else stored_content(message)
    if folders is None:
        folders = folder_values(message)
    envelope = message.envelope_recipients

    def kinds(*wanted: str) -> list[str]:
        return [r["address"] for r in envelope if r.get("kind") in wanted]

    senders = [*message.from_addresses, message.envelope_sender, message.on_behalf_of]
    display = _display_name(message.from_display)
    names = [a.filename for a in content.attachments if a.filename]
    return SearchDocument(
        id=message.pk,
        tenant_id=message.tenant_id,
        version=message.version,
        date=message.date,
        from_=union_list([a for a in senders if a], [display] if display else []),
        to=union_list(message.to, kinds("to")),
        cc=union_list(message.cc, kinds("cc")),
        bcc=union_list(message.bcc, kinds("bcc")),
        recipients=union_list(
            [r["address"] for r in envelope],
            [x for r in envelope for x in (r.get("expanded"), r.get("forwarded")) if x],
        ),
        subject=message.subject,
        body=content.body,
        attachment_names=names or [a["name"] for a in message.attachments if a.get("name")],
        attachment_text="\n".join(a.text for a in content.attachments if a.text),
        has_attachment=message.has_attachments or bool(content.attachments),
        size=message.size,
        participants=list(message.participants),
        # What the recipients read in the headers; the rest (Bcc, expansions,
        # forwards) only the sender, admins and auditors may search for.
        header_addresses=[*message.from_addresses, *message.to, *message.cc],
        kind=message.kind,
        folders=folders,
    )


def folder_values(message: Message) -> list[str]:
    """Where the message is filed now, as "mailbox/folder path" (lower-cased):
    one per mailbox copy not deleted from its mailbox (`search.document.SearchDocument.folders`)."""
    if not message.mailboxes:
        return []  # journal mail only: no source to look up
    return items.folders_of([message.pk]).get(message.pk, [])


def _display_name(from_display: str) -> str:
    pairs = _pairs(from_display) if from_display else []
    return ", ".join(name for name, _ in pairs if name)


def _pairs(value: str) -> list[tuple[str, str]]:
    """getaddresses([value]), without the `email` package's tokenizer for a
    simple list (a tenth of the worker's archiving and of its indexing)."""
    simple = simple_pairs(value)
    return simple if simple is not None else getaddresses([value])
