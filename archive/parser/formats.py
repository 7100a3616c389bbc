"""Text out of risky formats: PDF, OOXML, OpenDocument, RTF.  Runs in the sandbox child.

Each function takes the attachment's bytes and the options from
`Limits.child_options()` and returns {"text": ...}, or raises Skip with the
reason.  Zip containers are checked against bombs before anything is
inflated, every member is read with a hard cap (declared sizes can lie), and
XML goes through defusedxml so that entity expansion is refused.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from archive.parser.limits import Skip

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
S = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class _Text:
    """Collects text up to a cap; `full` tells the caller to stop reading."""

    def __init__(self, cap: int) -> None:
        self.cap, self.size = cap, 0
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        if text and self.size < self.cap:
            self.parts.append(text[: self.cap - self.size])
            self.size += len(self.parts[-1])

    @property
    def full(self) -> bool:
        return self.size >= self.cap

    def result(self) -> dict[str, Any]:
        return {"text": "".join(self.parts).strip()}


# --- PDF -----------------------------------------------------------------------


def extract_pdf(data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    from pypdf.errors import PdfReadError

    try:
        return _pdf_text(data, options)
    except PdfReadError as exc:
        if "startxref" not in str(exc) and "EOF" not in str(exc):
            raise Skip(f"corrupt: {str(exc)[:200]}") from None
    # No usable trailer (truncated, or written by hand): point pypdf at offset 0,
    # which makes it rebuild the cross-reference table by scanning the objects.
    try:
        return _pdf_text(data + b"\nstartxref\n0\n%%EOF\n", options)
    except PdfReadError as exc:
        raise Skip(f"corrupt: {str(exc)[:200]}") from None


def _pdf_text(data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Skip("encrypted")
        out = _Text(options["max_text_chars"])
        for number, page in enumerate(reader.pages):
            if number >= options["max_pdf_pages"] or out.full:
                break
            out.add(page.extract_text() + "\n")
    except (FileNotDecryptedError, NotImplementedError) as exc:
        # NotImplementedError: an encryption algorithm pypdf cannot undo
        raise Skip("encrypted") from exc
    return out.result()


# --- zip containers --------------------------------------------------------------


def extract_zip(data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    """DOCX, XLSX, PPTX or OpenDocument by what the zip holds; other zips give their member names."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = _checked_names(archive, options)
        out = _Text(options["max_text_chars"])
        if "word/document.xml" in names:
            _docx(archive, names, options, out)
        elif "xl/workbook.xml" in names:
            _xlsx(archive, names, options, out)
        elif "ppt/presentation.xml" in names:
            _pptx(archive, names, options, out)
        elif "content.xml" in names and _read(archive, "mimetype", options)[:36].startswith(b"application/vnd.oasis"):
            _odf(archive, options, out)
        else:
            out.add("\n".join(names))
    except zipfile.BadZipFile as exc:
        raise Skip(f"corrupt: {exc}") from None
    except DefusedXmlException:
        raise Skip("corrupt: XML with entity or DTD declarations") from None
    return out.result()


def _checked_names(archive: zipfile.ZipFile, options: dict[str, Any]) -> list[str]:
    infos = archive.infolist()
    if len(infos) > options["max_zip_members"]:
        raise Skip(f"too large: zip with {len(infos)} members")
    if sum(info.file_size for info in infos) > options["max_unzipped_bytes"]:
        raise Skip("too large: zip bomb (uncompressed size)")
    for info in infos:
        if info.file_size > (1 << 20) and info.file_size > options["max_zip_ratio"] * max(info.compress_size, 1):
            raise Skip("too large: zip bomb (compression ratio)")
        if info.flag_bits & 0x1:
            raise Skip("encrypted")
    return [info.filename for info in infos]


def _read(archive: zipfile.ZipFile, name: str, options: dict[str, Any]) -> bytes:
    """A member, inflating at most the cap: the declared size is not trusted."""
    cap = options["max_member_bytes"]
    try:
        with archive.open(name) as member:
            data = member.read(cap + 1)
    except KeyError:
        return b""
    if len(data) > cap:
        raise Skip(f"too large: {name} inflates past {cap} bytes")
    return data


def _elements(xml: bytes, tags: set[str]) -> Iterator[Any]:
    """End events of the given tags; each element is cleared after the caller has seen it."""
    if not xml:
        return
    for _event, elem in iterparse(io.BytesIO(xml), events=("end",), forbid_dtd=True):
        if elem.tag in tags:
            yield elem
            elem.clear()


def _numbered(names: list[str], pattern: str) -> list[str]:
    regex = re.compile(pattern)
    found = [(int(m.group(1)), name) for name in names if (m := regex.fullmatch(name))]
    return [name for _number, name in sorted(found)]


def _docx(archive: zipfile.ZipFile, names: list[str], options: dict[str, Any], out: _Text) -> None:
    parts = ["word/document.xml", "word/footnotes.xml", "word/endnotes.xml"]
    parts += _numbered(names, r"word/header(\d+)\.xml") + _numbered(names, r"word/footer(\d+)\.xml")
    for part in parts:
        _paragraphs(_read(archive, part, options), W + "p", _word_text, out)


def _word_text(paragraph: Any) -> str:
    pieces = []
    for node in paragraph.iter():
        if node.tag == W + "t" and node.text:
            pieces.append(node.text)
        elif node.tag == W + "tab":
            pieces.append("\t")
        elif node.tag in (W + "br", W + "cr"):
            pieces.append("\n")
    return "".join(pieces)


def _pptx(archive: zipfile.ZipFile, names: list[str], options: dict[str, Any], out: _Text) -> None:
    for part in _numbered(names, r"ppt/slides/slide(\d+)\.xml"):
        _paragraphs(_read(archive, part, options), A + "p", _drawing_text, out)


def _drawing_text(paragraph: Any) -> str:
    return "".join(node.text or "" for node in paragraph.iter(A + "t"))


def _paragraphs(xml: bytes, tag: str, text_of: Callable[[Any], str], out: _Text) -> None:
    if not xml:
        return
    for paragraph in _elements(xml, {tag}):
        out.add(text_of(paragraph) + "\n")
        if out.full:
            return


def _xlsx(archive: zipfile.ZipFile, names: list[str], options: dict[str, Any], out: _Text) -> None:
    shared = [
        "".join(node.text or "" for node in item.iter(S + "t"))
        for item in _elements(_read(archive, "xl/sharedStrings.xml", options) or b"<sst/>", {S + "si"})
    ]
    for part in _numbered(names, r"xl/worksheets/sheet(\d+)\.xml"):
        row: list[str] = []
        for elem in _elements(_read(archive, part, options), {S + "c", S + "row"}):
            if elem.tag == S + "row":
                out.add("\t".join(cell for cell in row if cell) + "\n")
                row = []
                if out.full:
                    return
            else:
                row.append(_cell_text(elem, shared))


def _cell_text(cell: Any, shared: list[str]) -> str:
    kind = cell.get("t")
    if kind == "inlineStr":
        return "".join(node.text or "" for node in cell.iter(S + "t"))
    value = cell.find(S + "v")
    text = value.text if value is not None and value.text else ""
    if kind == "s":
        try:
            return shared[int(text)]
        except (ValueError, IndexError):
            return ""
    return text


_ODF_SPECIAL = {TEXT + "tab": "\t", TEXT + "line-break": "\n"}


def _odf(archive: zipfile.ZipFile, options: dict[str, Any], out: _Text) -> None:
    for block in _elements(_read(archive, "content.xml", options), {TEXT + "p", TEXT + "h"}):
        out.add(_odf_text(block) + "\n")
        if out.full:
            return


def _odf_text(block: Any) -> str:
    """All text and tails in document order, without recursion (nesting depth is the sender's choice)."""
    pieces: list[str] = []
    stack: list[tuple[Any, bool]] = [(block, False)]
    while stack:
        node, done = stack.pop()
        if done:
            if node is not block and node.tail:
                pieces.append(node.tail)
            continue
        if node.tag == TEXT + "s":
            pieces.append(" " * min(_int(node.get(TEXT + "c"), 1), 100))
        elif node.tag in _ODF_SPECIAL:
            pieces.append(_ODF_SPECIAL[node.tag])
        elif node.text:
            pieces.append(node.text)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node))
    return "".join(pieces)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# --- RTF -----------------------------------------------------------------------------


def extract_rtf(data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    from striprtf.striprtf import rtf_to_text

    out = _Text(options["max_text_chars"])
    out.add(rtf_to_text(data.decode("latin-1"), errors="replace"))  # type: ignore[no-untyped-call]  # striprtf has no annotations
    return out.result()


def sniff_ole_encrypted(data: bytes) -> bool:
    """A password-protected Office file is an OLE container holding an EncryptedPackage stream."""
    return data.startswith(OLE_MAGIC) and "EncryptedPackage".encode("utf-16-le") in data[: 1 << 20]
