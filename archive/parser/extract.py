"""Text of a message: its body, and the names and contents of its attachments.

Plain text, CSV, HTML and nested messages are read in this process (they are
fast and bounded); PDF, Office, RTF and TNEF go to the sandbox child with a
timeout per attachment and a time budget per message.  Whatever goes wrong
with one attachment is recorded on it as `skipped`; the message goes on.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from archive.parser.formats import OLE_MAGIC, sniff_ole_encrypted
from archive.parser.htmltext import html_to_text
from archive.parser.limits import DEFAULT_LIMITS, Limits
from archive.parser.message import (
    header_text,
    parse_message,
    part_charset,
    part_filename,
    part_payload,
    part_payload_head,
    raw_header,
)
from archive.parser.parsed import Attachment
from archive.parser.rawmime import decode_text, decode_transfer, loose_text, to_bytes
from archive.parser.sandbox import Sandbox, SandboxError, shared_sandbox
from archive.parser.tnef import TNEF_MAGIC

_ZIP_MAGIC = b"PK\x03\x04"
_TEXT_EXTENSIONS = {".txt", ".csv", ".tsv", ".log", ".md", ".json", ".xml", ".ics", ".vcf", ".eml.txt"}
_HTML_EXTENSIONS = {".htm", ".html"}
_ZIP_EXTENSIONS = {".docx", ".docm", ".xlsx", ".xlsm", ".pptx", ".pptm", ".odt", ".ods", ".odp", ".zip"}
_MAX_MULTIPART_DEPTH = 50


@dataclass
class Content:
    """What a message says: the part of ParsedReport that comes from its MIME body."""

    subject: str = ""
    body_text: str = ""
    body_html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Why the body could not be read in full ("" when it could): said on the
    # message page, with the bound up to which its text is shown and searchable.
    body_note: str = ""


class Extractor:
    """Extracts one message; holds that message's time budget for risky formats.

    With `bodies_only` (the message page) attachments are neither decoded nor
    read: their list is kept on the Message when it is archived.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, sandbox: Sandbox | None = None, *, bodies_only: bool = False
    ) -> None:
        self.limits = limits
        self._sandbox = sandbox
        self.deadline = time.monotonic() + limits.message_budget
        self.parts_seen = 0
        self.bodies_only = bodies_only

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = shared_sandbox(self.limits.memory_bytes, self.limits.jobs_per_child)
        return self._sandbox

    # --- messages ---------------------------------------------------------------

    def message(self, msg: Message, depth: int = 0) -> Content:
        content = Content(subject=header_text(msg, "subject"))
        if _unparsed_multipart(msg):
            self._loose_body(msg, content)
            return content
        plain: list[str] = []
        html: list[str] = []
        for part, kind in self._leaves(msg, content.problems):
            if kind == "body":
                text, is_html = self._body_part(part, content)
                (html if is_html else plain).append(text)
            elif kind == "tnef":
                self._tnef(part, depth, content, plain, html)
            elif not self.bodies_only:
                content.attachments.append(self._part_attachment(part, depth))
        cap = self.limits.max_text_chars
        content.body_html = html[0][: self.limits.max_html_chars] if html else None
        body = "\n\n".join(t.strip() for t in plain if t.strip()) if plain else html_to_text("\n".join(html), cap)
        content.body_text = _lines(body).strip()[:cap]
        return content

    def _loose_body(self, msg: Message, content: Content) -> None:
        """A multipart whose structure the parser refused (nested too deeply)
        or could not find (no boundary): its text as found in the raw body,
        without delimiter lines and part headers, up to the text bound."""
        cap = self.limits.max_text_chars
        payload = msg.get_payload()
        raw = to_bytes(payload) if isinstance(payload, str) else b""
        content.body_text = loose_text(raw, cap)
        content.body_note = (
            "The message's MIME structure could not be taken apart (nested too deeply, or broken), so it is "
            f"shown as plain text found in the raw message: up to {cap:,} characters, which are also what search finds."
        )

    def _leaves(self, msg: Message, problems: list[str]) -> Iterator[tuple[Message, str]]:
        """(part, "body" | "tnef" | "attachment") in document order, without recursion."""
        stack = [(msg, 0)]
        while stack:
            part, level = stack.pop()
            ctype = _content_type(part)
            if part.is_multipart() and not ctype.startswith("message/"):
                if level >= _MAX_MULTIPART_DEPTH:
                    problems.append("MIME structure nested too deeply: inner parts not read")
                    continue
                children = part.get_payload()
                assert isinstance(children, list)  # a multipart's payload is its parts
                stack.extend((child, level + 1) for child in reversed(children) if isinstance(child, Message))
                continue
            self.parts_seen += 1
            if self.parts_seen > self.limits.max_attachments:
                problems.append(f"more than {self.limits.max_attachments} parts: the rest not read")
                return
            yield part, _leaf_kind(part, ctype, is_top=part is msg)

    def _body_part(self, part: Message, content: Content) -> tuple[str, bool]:
        is_html = _content_type(part) == "text/html"
        cap = self.limits.max_html_chars if is_html else self.limits.max_text_chars
        data, _size = part_payload(part, self.limits.max_attachment_bytes)
        if data is None:  # over the size bound: its start is read rather than nothing
            data = part_payload_head(part, cap * 4)
            content.body_note = (
                f"The body is larger than {self.limits.max_attachment_bytes // (1024 * 1024)} MB: only its first "
                f"{self.limits.max_text_chars:,} characters are shown and searchable."
            )
        text = decode_text(data[: cap * 4], part_charset(part))
        if len(text) > cap and not content.body_note:
            content.body_note = (
                f"The body is longer than {cap:,} characters: only its start is shown, and its text is "
                f"searchable up to {self.limits.max_text_chars:,} characters."
            )
        return text[:cap], is_html  # a huge body is cut, not dropped

    def _part_attachment(self, part: Message, depth: int) -> Attachment:
        ctype = _content_type(part)
        name = part_filename(part)
        if ctype.startswith("message/") and part.is_multipart():
            return self._nested(part, name, depth)
        data, size = part_payload(part, self.limits.max_attachment_bytes)
        name = name or _default_name(ctype)
        if data is None:
            return Attachment(filename=name, content_type=ctype, size=size, skipped="too large")
        return self.attachment(name, ctype, data, depth)

    def _nested(self, part: Message, name: str, depth: int) -> Attachment:
        children = part.get_payload()
        inner = (
            children[0] if isinstance(children, list) and children and isinstance(children[0], Message) else Message()
        )
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):  # not allowed for message/rfc822, sent all the same
            body = part_payload(inner, self.limits.max_attachment_bytes)[0] or b""
            inner, _problems = parse_message(decode_transfer(body, cte.encode()))
        subject = header_text(inner, "subject")
        attachment = Attachment(name or f"{subject or 'message'}.eml", "message/rfc822", _serialized_size(inner))
        if depth >= self.limits.max_depth:
            attachment.skipped = "nested too deeply"
            return attachment
        attachment.text = self._message_text(inner, depth + 1)
        return attachment

    def _message_text(self, msg: Message, depth: int) -> str:
        content = self.message(msg, depth)
        lines = [f"{name}: {header_text(msg, name)}" for name in ("From", "To", "Cc", "Date", "Subject")]
        pieces = ["\n".join(line for line in lines if not line.endswith(": ")), content.body_text]
        for item in content.attachments:
            pieces.append(f"{item.filename}\n{item.text}".strip())
        return "\n\n".join(p for p in pieces if p)[: self.limits.max_text_chars]

    def _tnef(self, part: Message, depth: int, content: Content, plain: list[str], html: list[str]) -> None:
        data, size = part_payload(part, self.limits.max_attachment_bytes)
        name = part_filename(part) or "winmail.dat"
        if data is None or depth >= self.limits.max_depth:
            reason = "too large" if data is None else "nested too deeply"
            content.attachments.append(Attachment(name, "application/ms-tnef", size, skipped=reason))
            return
        try:
            decoded = self._run("archive.parser.tnef:decode_tnef", data)
        except SandboxError as exc:
            content.attachments.append(Attachment(name, "application/ms-tnef", size, skipped=str(exc)))
            return
        if not (decoded["body"].strip() or decoded["html"] or decoded["attachments"]):
            content.attachments.append(
                Attachment(name, "application/ms-tnef", size, skipped="corrupt: TNEF without content")
            )
            return
        if decoded["body"].strip():
            plain.append(decoded["body"])
        if decoded["html"]:
            html.append(decoded["html"])
        for item in decoded["attachments"]:
            content.attachments.append(self._tnef_attachment(item, depth))

    def _tnef_attachment(self, item: dict[str, Any], depth: int) -> Attachment:
        name = item["name"] or "attachment"
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if "text" in item or "skipped" in item:  # an embedded message, or over the size cap
            return Attachment(
                name, ctype, len(item["data"]), text=item.get("text", ""), skipped=item.get("skipped", "")
            )
        return self.attachment(name, ctype, item["data"], depth + 1)

    # --- attachments ------------------------------------------------------------

    def attachment(self, filename: str, content_type: str, data: bytes, depth: int = 0) -> Attachment:
        """Text of one attachment by its bytes, name and declared type (in that order of trust)."""
        attachment = Attachment(filename=filename, content_type=content_type, size=len(data))
        if len(data) > self.limits.max_attachment_bytes:
            attachment.skipped = "too large"
            return attachment
        kind = sniff(filename, content_type, data)
        if kind == "text":
            attachment.text = _plain_text(data, self.limits.max_text_chars)
        elif kind == "html":
            attachment.text = html_to_text(decode_text(data[: self.limits.max_html_chars]), self.limits.max_text_chars)
        elif kind == "message":
            attachment.text = self._message_bytes_text(data, depth)
        elif kind == "encrypted":
            attachment.skipped = "encrypted"
        elif kind in _RISKY:
            try:
                attachment.text = self._run(_RISKY[kind], data)["text"][: self.limits.max_text_chars]
            except SandboxError as exc:
                attachment.skipped = str(exc)
        return attachment

    def _message_bytes_text(self, data: bytes, depth: int) -> str:
        if depth >= self.limits.max_depth:
            return ""
        msg, _problems = parse_message(data)
        return self._message_text(msg, depth + 1)

    def _run(self, func: str, data: bytes) -> dict[str, Any]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SandboxError("timed out: the message's extraction time budget is spent")
        result: dict[str, Any] = self.sandbox.run(
            func, data, self.limits.child_options(), min(self.limits.timeout, left)
        )
        return result


_RISKY = {
    "pdf": "archive.parser.formats:extract_pdf",
    "zip": "archive.parser.formats:extract_zip",
    "rtf": "archive.parser.formats:extract_rtf",
}


def sniff(filename: str, content_type: str, data: bytes) -> str:
    """What reader an attachment needs: magic bytes first, then the name, then the declared type."""
    ext = _extension(filename)
    head = data[:1024]
    if head.startswith(b"%PDF") or (b"%PDF-" in head and ext == ".pdf"):
        return "pdf"
    if head.startswith(_ZIP_MAGIC):
        office = any(word in content_type for word in ("officedocument", "opendocument", "zip"))
        return "zip" if ext in _ZIP_EXTENSIONS or office else ""
    if head.lstrip().startswith(b"{\\rtf"):
        return "rtf"
    if head.startswith(OLE_MAGIC):
        return "encrypted" if sniff_ole_encrypted(data) else ""
    if head.startswith(TNEF_MAGIC):
        return ""
    if content_type == "message/rfc822" or ext == ".eml":
        return "message"
    if content_type == "text/html" or ext in _HTML_EXTENSIONS:
        return "html"
    if (content_type.startswith("text/") or ext in _TEXT_EXTENSIONS) and b"\x00" not in head:
        return "text"
    if ext == ".pdf" or content_type == "application/pdf":
        return "pdf"
    return ""


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot >= 0 else ""


def _plain_text(data: bytes, cap: int) -> str:
    return _lines(decode_text(data[: cap * 4])).strip()[:cap]


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except (ValueError, TypeError, AttributeError):
        return "application/octet-stream"


def _unparsed_multipart(msg: Message) -> bool:
    """A multipart the parser left as one string: refused as too deep (headers
    only) or without a boundary to split it at."""
    return _content_type(msg).startswith("multipart/") and not msg.is_multipart()


def _serialized_size(msg: Message) -> int:
    try:
        return len(msg.as_bytes())
    except Exception:  # noqa: BLE001 - the generator trips on some broken trees; size is only informative
        return 0


def _leaf_kind(part: Message, ctype: str, is_top: bool) -> str:
    if ctype in ("application/ms-tnef", "application/vnd.ms-tnef") or part_filename(part).lower() == "winmail.dat":
        return "tnef"
    if ctype not in ("text/plain", "text/html"):
        return "attachment"
    if is_top:
        return "body"
    disposition = (raw_header(part, "content-disposition") or b"").strip().lower()
    if disposition.startswith(b"attachment") or part_filename(part):
        return "attachment"
    return "body"


def _default_name(content_type: str) -> str:
    return "attachment" + (mimetypes.guess_extension(content_type) or "")
