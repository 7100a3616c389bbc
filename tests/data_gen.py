"""Small documents and journal reports built in code, so no binary fixtures live in git.

Also the fake extractors the sandbox tests run in the child process
(`tests.data_gen:sleep_forever` and friends): the child imports this module.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import time
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

CORPUS_JOURNAL = "journal-000000SampleSampleSampleSampleSampleSampleSampleSample0@archive.archiva.com"


# --- journal reports ---------------------------------------------------------------


def wrap_as_journal(
    original: bytes,
    *,
    sender: str = "alice@contoso.com",
    recipients: list[str] | None = None,
    subject: str = "",
    message_id: str = "",
    cte: str = "7bit",
    decrypted: bytes | None = None,
    exchange2003: bool = False,
    envelope_lines: list[str] | None = None,
) -> bytes:
    """An MS-XJRNL envelope journal report carrying `original` byte for byte."""
    boundary = "_000_" + secrets.token_hex(16)
    while boundary.encode() in original or (decrypted and boundary.encode() in decrypted):
        boundary = "_000_" + secrets.token_hex(16)
    marker = "Content-Identifier: ExJournalReport" if exchange2003 else "X-MS-Journal-Report:"
    lines = envelope_lines or [
        f"Sender: {sender}",
        f"Subject: {subject}",
        f"Message-Id: {message_id}",
        *[f"{'Recipient' if exchange2003 else 'To'}: {r}" for r in (recipients or ["bob@fabrikam.com"])],
    ]
    head = (
        "From: alice@contoso.com\r\n"
        f"To: {CORPUS_JOURNAL}\r\n"
        f"Subject: {subject or 'journal report'}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@journal.report.generator>\r\n"
        "Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n"
        f"{marker}\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        "MIME-Version: 1.0\r\n\r\n"
    ).encode()
    body = (
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
        + "\r\n".join(lines)
        + f"\r\n--{boundary}\r\n"
        f"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode("utf-8", "surrogateescape") + original
    if decrypted is not None:
        body += (
            f"\r\n--{boundary}\r\n"
            'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="decrypted.eml"\r\n\r\n'
        ).encode() + decrypted
    return head + body + f"\r\n--{boundary}--\r\n".encode()


def mail(
    subject: str = "Test",
    body: str = "Hello",
    attachments: list[tuple[str, str, bytes]] = (),
    html: str | None = None,
    message_id: str = "<test-1@contoso.com>",
) -> bytes:
    """A small original message with attachments given as (filename, content type, bytes)."""
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@contoso.com>"
    msg["To"] = "bob@fabrikam.com"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Mar 2026 09:30:00 +0100"
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        if maintype == "message":
            msg.add_attachment(_message_part(data), filename=filename)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP)


def _message_part(raw: bytes) -> EmailMessage:
    from email import message_from_bytes
    from email.policy import default

    return message_from_bytes(raw, policy=default)


# --- documents ------------------------------------------------------------------------


def pdf(text: str, *, pages: int = 1) -> bytes:
    """A minimal valid PDF, one line of Helvetica per page, with a correct xref table."""
    objects = ["<</Type/Catalog/Pages 2 0 R>>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<</Type/Pages/Kids[{kids}]/Count {pages}>>")
    font = 3 + 2 * pages
    for i in range(pages):
        line = text if pages == 1 else f"{text} page {i + 1}"
        stream = f"BT /F1 12 Tf 20 60 Td ({line}) Tj ET"
        objects.append(f"<</Type/Page/Parent 2 0 R/MediaBox[0 0 300 144]/Contents {4 + 2 * i} 0 R"
                       f"/Resources<</Font<</F1 {font} 0 R>>>>>>")  # fmt: skip
        objects.append(f"<</Length {len(stream)}>>stream\n{stream}\nendstream")
    objects.append("<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj{body}endobj\n".encode("latin-1"))
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer<</Size {len(objects) + 1}/Root 1 0 R>>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def encrypted_pdf(text: str, password: str = "s3cret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(text))))
    writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def zip_of(members: dict[str, bytes | str]) -> bytes:
    """A zip archive (deflated) of these members: the container of Office and ODF files."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_CT = "http://schemas.openxmlformats.org/package/2006/content-types"


def docx(paragraphs: list[str]) -> bytes:
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    return zip_of(
        {
            "[Content_Types].xml": f'<?xml version="1.0"?><Types xmlns="{_CT}"/>',
            "word/document.xml": f'<?xml version="1.0"?><w:document {_W}><w:body>{body}</w:body></w:document>',
        }
    )


def docx_with_document_xml(document_xml: bytes) -> bytes:
    return zip_of({"[Content_Types].xml": "<Types/>", "word/document.xml": document_xml})


def xlsx(rows: list[list[str | int]]) -> bytes:
    """Strings go to the shared-strings table, numbers stay inline: both paths get read."""
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    shared: list[str] = []
    cells_xml = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for value in row:
            if isinstance(value, str):
                shared.append(value)
                cells.append(f'<c t="s"><v>{len(shared) - 1}</v></c>')
            else:
                cells.append(f"<c><v>{value}</v></c>")
        cells_xml.append(f'<row r="{r}">{"".join(cells)}</row>')
    sst = "".join(f"<si><t>{s}</t></si>" for s in shared)
    return zip_of(
        {
            "[Content_Types].xml": "<Types/>",
            "xl/workbook.xml": f'<workbook {ns}><sheets><sheet name="Sheet1" sheetId="1"/></sheets></workbook>',
            "xl/sharedStrings.xml": f"<sst {ns}>{sst}</sst>",
            "xl/worksheets/sheet1.xml": f"<worksheet {ns}><sheetData>{''.join(cells_xml)}</sheetData></worksheet>",
        }
    )


def odt(paragraphs: list[str]) -> bytes:
    ns = (
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'
    )
    body = "".join(f"<text:p>{p.replace('  ', '<text:s/> ')}</text:p>" for p in paragraphs)
    text = f"<office:text><text:h>Title</text:h>{body}</office:text>"
    content = f"<office:document-content {ns}><office:body>{text}</office:body></office:document-content>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text", compress_type=zipfile.ZIP_STORED)
        archive.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def rtf(text: str) -> bytes:
    return ("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Arial;}}\\f0\\fs20 " + text + "\\par}").encode("latin-1")


def zip_bomb_docx(inflated_bytes: int = 64 * 1024 * 1024) -> bytes:
    """A DOCX whose document.xml inflates past a thousand times its compressed size."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            chunk = b" " * (1 << 20)
            for _ in range(inflated_bytes // len(chunk)):
                member.write(chunk)
    return out.getvalue()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>&lol3;</w:t></w:r></w:p></w:body></w:document>"""


# What a password-protected DOCX is: an OLE compound file with an EncryptedPackage stream.
OLE_ENCRYPTED_DOCX = (
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + "EncryptedPackage".encode("utf-16-le") + bytes(1000)
)


# --- TNEF ---------------------------------------------------------------------------------

_TNEF_SIGNATURE = 0x223E9F78


def _tnef_attribute(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
    return struct.pack("<BHHI", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def _mapi_binary(prop_id: int, data: bytes) -> bytes:
    padded = data + b"\x00" * (-len(data) % 4)
    return struct.pack("<IHHII", 1, 0x0102, prop_id, 1, len(data)) + padded


def tnef(body: str = "", attachments: list[tuple[str, bytes]] = (), rtf_body: str | None = None) -> bytes:
    """A winmail.dat: a plain body (attBody) or a compressed-RTF body (MAPI), and attachments."""
    out = struct.pack("<IH", _TNEF_SIGNATURE, 0x0001)
    out += _tnef_attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))  # attTnefVersion
    out += _tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))  # attOemCodepage
    if body:
        out += _tnef_attribute(1, 0x800C, 0x0002, body.encode("cp1252"))  # attBody
    if rtf_body is not None:
        from compressed_rtf import compress

        out += _tnef_attribute(1, 0x9003, 0x0006, _mapi_binary(0x1009, compress(rtf(rtf_body))))  # PR_RTF_COMPRESSED
    for name, data in attachments:
        out += _tnef_attribute(2, 0x9002, 0x0006, b"\xff\xff\xff\xff" + b"\x00" * 10)  # attAttachRendData
        out += _tnef_attribute(2, 0x8010, 0x0001, name.encode() + b"\x00")  # attAttachTitle
        out += _tnef_attribute(2, 0x800F, 0x0006, data)  # attAttachData
    return out


# --- fake extractors, run inside the sandbox child ------------------------------------------


def sleep_forever(data: bytes, options: dict) -> dict:
    while True:
        time.sleep(1)


def spin_forever(data: bytes, options: dict) -> dict:
    while True:
        pass


def eat_memory(data: bytes, options: dict) -> dict:
    hog = []
    while True:
        hog.append(bytearray(64 * 1024 * 1024))


def crash(data: bytes, options: dict) -> dict:
    os._exit(3)


def echo(data: bytes, options: dict) -> dict:
    return {"text": data.decode(), "blob": data, "pid": os.getpid()}


def echo_bytes(data: bytes, options: dict) -> dict:
    return {"blob": data}
