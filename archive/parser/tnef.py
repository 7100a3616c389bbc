"""Decode TNEF (winmail.dat, application/ms-tnef).  Runs in the sandbox child.

tnefparse copies the remaining input for every attribute it reads, so a
crafted file is quadratic: that is why this runs under the child's limits.
"""

from __future__ import annotations

from typing import Any

from archive.parser.limits import Skip
from archive.parser.rawmime import decode_text

TNEF_MAGIC = b"\x78\x9f\x3e\x22"


def decode_tnef(data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    """{"body": text, "html": text or None, "attachments": [{"name", "data"}]}."""
    from tnefparse.tnef import TNEF

    if not data.startswith(TNEF_MAGIC):
        raise Skip("corrupt: not TNEF")
    tnef = TNEF(data, do_checksum=False)
    return _contents(tnef, options, depth=0)


def _contents(tnef: Any, options: dict[str, Any], depth: int) -> dict[str, Any]:
    cap = options["max_text_chars"]
    codepage = tnef.codepage or "cp1252"
    body = _text(tnef.body, codepage)
    html = _text(tnef.htmlbody, codepage) or None
    if not body and not html and tnef.has_body():
        body = _rtf_body(tnef)
    attachments = []
    for item in tnef.attachments[:500]:
        name = _name(item)
        embedded = getattr(item, "embed", None)
        if embedded is not None and depth < 3:
            inner = _contents(embedded, options, depth + 1)
            text = "\n".join([inner["body"]] + [a["name"] for a in inner["attachments"]])
            attachments.append({"name": name or "message", "data": b"", "text": text[:cap]})
            continue
        data = item.data if isinstance(item.data, bytes) else b""
        if len(data) > options["max_attachment_bytes"]:
            attachments.append({"name": name, "data": b"", "skipped": "too large"})
            continue
        attachments.append({"name": name, "data": data})
    return {"body": body[:cap], "html": html[: cap * 5] if html else None, "attachments": attachments}


def _text(value: Any, codepage: str) -> str:
    if isinstance(value, str):
        return value.strip("\x00")
    if isinstance(value, bytes):
        return decode_text(value.rstrip(b"\x00"), codepage)
    return ""


def _rtf_body(tnef: Any) -> str:
    from striprtf.striprtf import rtf_to_text

    rtf = tnef.rtfbody
    if not isinstance(rtf, bytes) or not rtf.lstrip().startswith(b"{\\rtf"):
        return ""
    text: str = rtf_to_text(rtf.decode("latin-1"), errors="replace")  # type: ignore[no-untyped-call]  # striprtf has no annotations
    return text


def _name(item: Any) -> str:
    try:
        name = item.long_filename()
    except (UnicodeDecodeError, AttributeError, IndexError):
        name = item._name
    if isinstance(name, bytes):
        name = decode_text(name)
    return str(name or "").strip("\x00").strip()
