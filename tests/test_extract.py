"""Text extraction: every supported format, and hostile files that must be skipped with a reason."""

from __future__ import annotations

import time

import pytest

from archive.parser import extract
from archive.parser.extract import sniff
from archive.parser.htmltext import html_to_text
from archive.parser.journal import parse_report
from archive.parser.limits import Limits
from archive.parser.rawmime import decode_text, multipart_depth, split_multipart
from archive.parser.sandbox import Sandbox, SandboxError
from tests import data_gen

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODT = "application/vnd.oasis.opendocument.text"


@pytest.fixture
def sandbox():
    box = Sandbox()
    yield box
    box.close()


def attachments_of(raw: bytes, **kwargs) -> list:
    return parse_report(data_gen.wrap_as_journal(raw), **kwargs).attachments


def one(filename: str, content_type: str, data: bytes, **kwargs):
    (attachment,) = attachments_of(data_gen.mail(attachments=[(filename, content_type, data)]), **kwargs)
    return attachment


# --- formats ------------------------------------------------------------------------------------


def test_pdf_text_of_every_page():
    attachment = one("report.pdf", "application/pdf", data_gen.pdf("Quarterly revenue", pages=3))
    assert attachment.skipped == ""
    assert [line for line in attachment.text.splitlines() if line] == [
        "Quarterly revenue page 1",
        "Quarterly revenue page 2",
        "Quarterly revenue page 3",
    ]


def test_pdf_without_xref_table_is_repaired():
    broken = data_gen.pdf("No trailer here")
    broken = broken[: broken.index(b"xref")] + b"trailer<</Root 1 0 R>>\n%%EOF\n"
    assert one("a.pdf", "application/pdf", broken).text == "No trailer here"


def test_pdf_sent_as_octet_stream_is_recognised_by_its_bytes():
    attachment = one("scan", "application/octet-stream", data_gen.pdf("Magic bytes win"))
    assert attachment.text == "Magic bytes win"


def test_docx_paragraphs():
    attachment = one("memo.docx", DOCX, data_gen.docx(["Merger memo", "Strictly confidential"]))
    assert attachment.text == "Merger memo\nStrictly confidential"
    assert attachment.content_type == DOCX and attachment.skipped == ""


def test_xlsx_shared_strings_and_numbers():
    attachment = one("book.xlsx", XLSX, data_gen.xlsx([["Item", "Qty"], ["Widget", 42]]))
    assert attachment.text == "Item\tQty\nWidget\t42"


def test_odt_headings_paragraphs_and_spaces():
    attachment = one("letter.odt", ODT, data_gen.odt(["Dear  Bob", "Regards"]))
    assert attachment.text == "Title\nDear  Bob\nRegards"


def test_rtf_text():
    assert one("note.rtf", "application/rtf", data_gen.rtf("Rich text body")).text == "Rich text body"


def test_unbalanced_rtf_gives_no_text_and_no_error():
    attachment = one("bad.rtf", "application/rtf", b"{\\rtf1 " + b"{" * 50_000)
    assert (attachment.text, attachment.skipped) == ("", "")


def test_csv_and_latin1_plain_text():
    assert one("data.csv", "text/csv", b"a,b\r\n1,2\r\n").text == "a,b\n1,2"
    assert one("notes.txt", "application/octet-stream", "Gr\xfc\xdfe".encode("latin-1")).text == "Grüße"


def test_html_attachment_is_converted():
    html = b"<html><head><style>.x{}</style></head><body><p>Visible</p><script>hidden()</script></body></html>"
    assert one("page.html", "text/html", html).text == "Visible"


def test_generic_zip_lists_member_names():
    attachment = one("bundle.zip", "application/zip", data_gen.zip_of({"contract-2026.pdf": b"x", "notes.txt": b"y"}))
    assert attachment.text == "contract-2026.pdf\nnotes.txt"


def test_binary_attachment_keeps_its_name_without_text():
    attachment = one("photo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert (attachment.filename, attachment.text, attachment.skipped) == ("photo.png", "", "")
    assert attachment.size == 264


def test_attachment_names_in_rfc2231_and_rfc2047_are_decoded():
    raw = (
        b"Subject: names\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''%C3%9Cbersicht.bin\r\n\r\nx\r\n"
        b'--b\r\nContent-Type: application/octet-stream; name="=?utf-8?B?0J/RgNC40LLQtdGCLmJpbg==?="\r\n\r\ny\r\n'
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=x-bogus''%FF\r\n\r\nz\r\n"
        b"--b--\r\n"
    )
    names = [a.filename for a in parse_report(raw).attachments]
    assert names[:2] == ["Übersicht.bin", "Привет.bin"]
    assert len(names) == 3


def test_nested_message_text_includes_its_subject_body_and_attachments():
    inner = data_gen.mail(
        subject="Inner subject",
        body="Inner body words",
        attachments=[("inner.pdf", "application/pdf", data_gen.pdf("Deep pdf"))],
    )
    attachment = one("forwarded.eml", "message/rfc822", inner)
    assert attachment.content_type == "message/rfc822"
    assert "Subject: Inner subject" in attachment.text
    assert "Inner body words" in attachment.text
    assert "inner.pdf" in attachment.text and "Deep pdf" in attachment.text


def test_nested_messages_stop_at_the_depth_limit():
    raw = data_gen.mail(subject="level 0", body="body 0")
    for level in range(1, 5):
        raw = data_gen.mail(
            subject=f"level {level}", body=f"body {level}", attachments=[("m.eml", "message/rfc822", raw)]
        )
    (attachment,) = attachments_of(raw, limits=Limits(max_depth=2))
    assert "body 3" in attachment.text and "body 2" in attachment.text
    assert "body 1" not in attachment.text


def test_html_only_body_becomes_text_and_the_html_is_kept():
    html = "<html><body><h1>Offer</h1><p>Price:&nbsp;10&euro;</p><style>p{}</style><script>x()</script></body></html>"
    report = parse_report(data_gen.wrap_as_journal(_html_only(html)))
    assert report.body_text == "Offer\n\nPrice: 10€"
    assert report.body_html is not None and "<h1>Offer</h1>" in report.body_html


def _html_only(html: str) -> bytes:
    return f"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n".encode()


def test_alternative_prefers_plain_text_and_keeps_html():
    report = parse_report(data_gen.mail(body="Plain words", html="<p>Html words</p>"))
    assert report.body_text == "Plain words"
    assert report.body_html.strip() == "<p>Html words</p>"


# --- hostile files -------------------------------------------------------------------------------


def test_zip_bomb_docx_is_skipped():
    attachment = one("bomb.docx", DOCX, data_gen.zip_bomb_docx())
    assert attachment.skipped == "too large: zip bomb (compression ratio)"
    assert attachment.text == ""


def test_zip_whose_members_add_up_past_the_limit_is_skipped():
    limits = Limits(max_unzipped_bytes=1_000_000)
    docx = data_gen.docx([" ".join(f"w{i}" for i in range(200_000))])
    assert one("big.docx", DOCX, docx, limits=limits).skipped == "too large: zip bomb (uncompressed size)"


def test_xml_entity_bomb_is_skipped():
    attachment = one("laughs.docx", DOCX, data_gen.docx_with_document_xml(data_gen.BILLION_LAUGHS))
    assert attachment.skipped == "corrupt: XML with entity or DTD declarations"


def test_attachment_over_the_size_limit_is_skipped_without_decoding(monkeypatch):
    from email.message import Message

    decoded = []
    get_payload = Message.get_payload

    def recording(self, i=None, decode=False):
        if decode and len(str(self._payload)) > 2_000_000:
            decoded.append(self.get_filename())
        return get_payload(self, i, decode)

    monkeypatch.setattr(Message, "get_payload", recording)
    attachment = one(
        "huge.pdf",
        "application/pdf",
        data_gen.pdf("x") + b"%" * 2_000_000,
        limits=Limits(max_attachment_bytes=1_000_000),
    )
    assert attachment.skipped == "too large"
    assert attachment.size > 1_000_000 and attachment.text == ""
    assert decoded == []


def test_extracted_text_is_capped():
    attachment = one("long.txt", "text/plain", b"word " * 100_000, limits=Limits(max_text_chars=1000))
    assert len(attachment.text) <= 1000


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "reason"),
    [
        ("bad.pdf", "application/pdf", b"%PDF-1.4\n garbage", "corrupt"),
        ("bad.docx", DOCX, b"PK\x03\x04 not really a zip", "corrupt"),
        (
            "bad.xlsx",
            XLSX,
            data_gen.zip_of({"xl/workbook.xml": "<workbook", "xl/worksheets/sheet1.xml": "<<"}),
            "corrupt",
        ),
        (
            "bad.odt",
            ODT,
            data_gen.zip_of({"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": "<a><b>"}),
            "corrupt",
        ),
        ("secret.pdf", "application/pdf", data_gen.encrypted_pdf("hidden words"), "encrypted"),
        ("locked.docx", DOCX, data_gen.OLE_ENCRYPTED_DOCX, "encrypted"),
    ],
)
def test_broken_and_encrypted_files_are_skipped_with_a_reason(filename, content_type, data, reason):
    attachment = one(filename, content_type, data)
    assert attachment.skipped.startswith(reason), attachment.skipped
    assert "hidden words" not in attachment.text


def test_a_spinning_extractor_is_stopped_by_the_timeout_and_the_next_attachment_still_works(monkeypatch):
    monkeypatch.setitem(extract._RISKY, "rtf", "tests.data_gen:spin_forever")
    raw = data_gen.mail(
        attachments=[
            ("spin.rtf", "application/rtf", data_gen.rtf("x")),
            ("ok.pdf", "application/pdf", data_gen.pdf("Still read")),
        ]
    )
    started = time.monotonic()
    spin, ok = attachments_of(raw, limits=Limits(timeout=1.0))
    assert time.monotonic() - started < 8
    assert spin.skipped == "timed out"
    assert ok.text == "Still read" and ok.skipped == ""


def test_the_message_budget_bounds_several_slow_attachments(monkeypatch):
    monkeypatch.setitem(extract._RISKY, "rtf", "tests.data_gen:sleep_forever")
    raw = data_gen.mail(attachments=[(f"slow{i}.rtf", "application/rtf", data_gen.rtf("x")) for i in range(4)])
    started = time.monotonic()
    found = attachments_of(raw, limits=Limits(timeout=1.0, message_budget=1.5))
    assert time.monotonic() - started < 8
    assert [a.skipped for a in found] == ["timed out", "timed out"] + [
        "timed out: the message's extraction time budget is spent"
    ] * 2


def test_an_extractor_eating_memory_hits_the_child_limit(monkeypatch):
    monkeypatch.setitem(extract._RISKY, "rtf", "tests.data_gen:eat_memory")
    limits = Limits(memory_bytes=512 * 1024 * 1024, timeout=20)
    assert one("hog.rtf", "application/rtf", data_gen.rtf("x"), limits=limits).skipped == "too large: out of memory"


def test_a_crashing_extractor_is_reported_and_the_sandbox_recovers(sandbox):
    with pytest.raises(SandboxError, match=r"crashed \(exit status 3\)"):
        sandbox.run("tests.data_gen:crash", b"", {}, timeout=10)
    assert sandbox.run("tests.data_gen:echo", b"back", {}, timeout=10)["text"] == "back"


def test_the_sandbox_child_serves_many_jobs_then_is_recycled():
    box = Sandbox(jobs_per_child=3)
    try:
        pids = [box.run("tests.data_gen:echo", bytes([i]) * 10, {}, timeout=10)["pid"] for i in range(4)]
        assert pids[0] == pids[1] == pids[2] != pids[3]
    finally:
        box.close()


def test_bytes_round_trip_through_the_sandbox(sandbox):
    data = bytes(range(256)) * 1000
    assert sandbox.run("tests.data_gen:echo_bytes", data, {}, timeout=10) == {"blob": data}


def test_messages_without_risky_attachments_never_start_a_child():
    class NoSandbox(Sandbox):
        def run(self, *args, **kwargs):
            raise AssertionError("the fast path must stay in-process")

    raw = data_gen.mail(
        html="<p>hi</p>",
        attachments=[
            ("a.csv", "text/csv", b"a,b"),
            ("b.png", "image/png", b"\x89PNG"),
            ("m.eml", "message/rfc822", data_gen.mail()),
        ],
    )
    report = parse_report(data_gen.wrap_as_journal(raw), sandbox=NoSandbox())
    assert len(report.attachments) == 3 and report.problems == []


# --- helpers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type", "head", "kind"),
    [
        ("x.bin", "application/octet-stream", b"%PDF-1.7", "pdf"),
        ("x.docx", "application/octet-stream", b"PK\x03\x04", "zip"),
        ("x.jar", "application/java-archive", b"PK\x03\x04", ""),
        ("x", "application/msword", b"{\\rtf1", "rtf"),
        ("x.txt", "application/octet-stream", b"hello", "text"),
        ("x.txt", "application/octet-stream", b"hel\x00lo", ""),
        ("x.htm", "application/octet-stream", b"<p>", "html"),
        ("x.eml", "application/octet-stream", b"From: a", "message"),
        ("x.png", "image/png", b"\x89PNG", ""),
    ],
)
def test_sniff_trusts_bytes_then_name_then_type(filename, content_type, head, kind):
    assert sniff(filename, content_type, head) == kind


def test_html_to_text_handles_blocks_tables_and_entities():
    html = "<div>a<b>W</b>orld</div>b<p>para&amp;</p><table><tr><td>c1</td><td>c2</td></tr></table><!-- c -->tail"
    assert html_to_text(html) == "aWorld\nb\npara&\n\nc1 c2\n\ntail"


@pytest.mark.parametrize(
    "html",
    ["<div>" * 200_000, "<b><div>" * 50_000, "<" * 1_000_000, "<!--x" * 200_000, "<p>x" * 500_000, "&amp;" * 200_000],
)
def test_html_to_text_is_fast_on_pathological_markup(html):
    started = time.process_time()
    html_to_text(html)
    assert time.process_time() - started < 3


def test_deeply_nested_html_still_yields_its_text():
    assert html_to_text("<div>" * 5000 + "<p>needle</p><script>no</script>") == "needle"


def test_the_fallback_drops_head_but_keeps_header_and_scripts_end_at_their_own_tag():
    deep = "<div>" * 5000  # past the parser's nesting limit: the stripping fallback
    html = deep + "<head><title>no</title></head><header>Top</header><p>a</p><scripts>kept</scripts>"
    html += "<script>x</scriptx>gone</script><p>b</p>"
    assert html_to_text(html).split() == ["Top", "a", "kept", "b"]


def test_decode_text_falls_back_without_raising():
    assert decode_text("Grüße".encode(), "x-no-such-charset") == "Grüße"
    assert decode_text("Grüße".encode("latin-1"), "utf-8") == "Gr\ufffd\ufffde"
    assert decode_text("Grüße".encode("latin-1"), None) == "Grüße"
    assert decode_text("Grüße".encode("latin-1"), "us-ascii") == "Grüße"
    assert decode_text(b"abc", "base64") == "abc"
    assert decode_text("€".encode("utf-16"), None) == "€"


def test_split_multipart_keeps_exact_bytes_and_reports_the_close():
    body = b"preamble\r\n--b\r\nA: 1\r\n\r\none\r\n--b \r\n\r\ntwo\n\r\n--bb\r\n--b--\r\nepilogue"
    parts, closed = split_multipart(body, "b")
    assert parts == [b"A: 1\r\n\r\none", b"\r\ntwo\n\r\n--bb"] and closed
    assert split_multipart(b"--b\r\nx\r\n--b\r\ny", "b") == ([b"x", b"y"], False)
    assert split_multipart(b"no delimiters", "b") == ([], False)


def test_multipart_depth_follows_delimiters():
    wide = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n\r\nx\r\n--b%d--\r\n" % (i, i, i)
        for i in range(100)
    )
    assert multipart_depth(b"Content-Type: multipart/mixed; boundary=top\r\n\r\n--top\r\n" + wide) == 2
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(100))
    assert multipart_depth(deep) > 30


def test_deep_multipart_with_a_long_body_is_refused_quickly():
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(200))
    raw = b"Subject: deep\r\n" + deep + b"Content-Type: text/plain\r\n\r\n" + b"line\r\n" * 300_000
    started = time.process_time()
    report = parse_report(raw)
    assert time.process_time() - started < 5
    assert report.subject == "deep" and report.original == raw
    assert report.problems == ["MIME structure nested more than 30 levels deep: parts not split, text read as found"]


def test_a_huge_body_is_cut_to_the_cap_not_dropped():
    raw = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + b"word " * 400_000
    report = parse_report(raw, limits=Limits(max_text_chars=100_000))
    assert len(report.body_text) == 100_000 - 1 and report.body_text.startswith("word word")


def test_pptx_slide_text():
    pptx = data_gen.zip_of(
        {
            "ppt/presentation.xml": '<p:presentation xmlns:p="urn:p"/>',
            "ppt/slides/slide2.xml": _slide("Second slide"),
            "ppt/slides/slide1.xml": _slide("First slide"),
        }
    )
    assert one("deck.pptx", "application/octet-stream", pptx).text == "First slide\nSecond slide"


def _slide(text: str) -> str:
    drawing = "http://schemas.openxmlformats.org/drawingml/2006/main"
    return f'<p:sld xmlns:p="urn:p" xmlns:a="{drawing}"><a:p><a:r><a:t>{text}</a:t></a:r></a:p></p:sld>'
