"""Unwrapping journal reports: the shared corpus file by file, then the variants Exchange sends."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archive.parser import journal
from archive.parser.journal import parse_envelope, parse_report
from archive.parser.parsed import EnvelopeRecipient, ParsedReport
from tests import data_gen

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.eml"))


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def recipients(report: ParsedReport) -> list[tuple]:
    return [(r.address, r.kind, r.expanded, r.forwarded) for r in report.envelope_recipients]


def test_the_shared_corpus_is_there():
    assert CORPUS.is_dir(), f"the shared corpus is missing: expected it at {CORPUS}"
    assert len(CORPUS_FILES) >= 12, f"expected the 12 sample reports in {CORPUS}, found {len(CORPUS_FILES)}"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_every_corpus_file_parses_cleanly(path: Path):
    raw = path.read_bytes()
    report = parse_report(raw)
    assert report.problems == []
    assert report.is_journal == (not path.name.startswith("10-"))
    assert report.content_sha256 == hashlib.sha256(report.original).hexdigest()
    assert report.original != raw if report.is_journal else report.original == raw
    assert report.subject and report.body_text
    assert report.date is not None and report.date.tzinfo is not None and report.date.utcoffset().total_seconds() == 0
    if report.is_journal:
        assert report.envelope_sender and report.envelope_recipients


def test_01_simple_report_yields_the_original_and_its_one_recipient():
    report = parse_report(corpus("01-simple.eml"))
    assert report.is_journal
    assert report.original.startswith(b"From: Alice Example <alice@contoso.com>\r\nTo: bob@fabrikam.com\r\n")
    assert report.original.endswith(b"Alice")  # the CRLF before the boundary belongs to the boundary
    assert report.message_id == "q3-numbers-0001@contoso.com"
    assert report.subject == "Quarterly numbers"
    assert report.from_addresses == ["alice@contoso.com"]
    assert report.from_display == "Alice Example <alice@contoso.com>"
    assert report.to == ["bob@fabrikam.com"] and report.cc == [] and report.bcc == []
    assert report.date == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert report.envelope_sender == "alice@contoso.com"
    assert recipients(report) == [("bob@fabrikam.com", "to", None, None)]
    assert report.body_text == "Hi Bob,\nthe Q3 numbers are attached soon.\nAlice"
    assert report.body_html is None and report.attachments == [] and report.decrypted is None


def test_02_bcc_expanded_and_forwarded_come_from_the_envelope():
    report = parse_report(corpus("02-bcc-expanded-forwarded.eml"))
    assert recipients(report) == [
        ("bob@fabrikam.com", "to", None, None),
        ("erin@contoso.com", "to", "sales@contoso.com", None),
        ("frank@contoso.com", "to", "sales@contoso.com", None),
        ("carol@contoso.com", "cc", None, None),
        ("gina@contoso.com", "cc", None, "carol@contoso.com"),
        ("dave@contoso.com", "bcc", None, None),
    ]
    assert report.bcc == []  # the original's headers never name dave
    assert b"dave" not in report.original
    assert report.to == ["sales@contoso.com", "bob@fabrikam.com"] and report.cc == ["carol@contoso.com"]


def test_03_pdf_and_csv_attachment_text_is_extracted():
    report = parse_report(corpus("03-attachments.eml"))
    pdf, csv = report.attachments
    assert (pdf.filename, pdf.content_type, pdf.skipped) == ("invoice-4471.pdf", "application/pdf", "")
    assert "Invoice 4471 due" in pdf.text
    assert pdf.size == 393
    assert (csv.filename, csv.content_type, csv.skipped) == ("lines.csv", "text/csv", "")
    assert csv.text == "sku,qty,price\nA-100,3,19.99\nB-200,1,249.00"
    assert report.has_attachments
    assert report.body_text == "Please find invoice 4471 attached."


def test_04_non_ascii_subject_and_qp_envelope_are_decoded():
    report = parse_report(corpus("04-non-ascii.eml"))
    assert report.subject == "Überweisung für März — 東京 office"
    assert report.body_text == "Grüße aus München. Die Überweisung ist erledigt.\n東京の皆さんによろしく。"
    assert report.envelope_sender == "juergen@contoso.com"
    assert recipients(report) == [("kenji@fabrikam.co.jp", "to", None, None)]
    envelope = parse_envelope("Subject: Überweisung für März — 東京 office\r\n")
    assert envelope.subject == "Überweisung für März — 東京 office"


def test_05_binary_original_is_kept_byte_for_byte():
    raw = corpus("05-binary-cte.eml")
    start = raw.index(b"Content-Transfer-Encoding: binary\r\n\r\n") + len(b"Content-Transfer-Encoding: binary\r\n\r\n")
    end = raw.index(b"\r\n--_000_d8eca1837e24494c9375ead1effb4ae5--")
    report = parse_report(raw)
    assert report.original == raw[start:end]
    assert "Café crème, naïve résumé.".encode() in report.original
    assert report.body_text == "Café crème, naïve résumé."
    assert report.content_sha256 == hashlib.sha256(raw[start:end]).hexdigest()


def test_06_exchange_2003_report_with_recipient_lines():
    report = parse_report(corpus("06-exchange2003.eml"))
    assert report.is_journal
    assert recipients(report) == [("peter@contoso.com", "recipient", None, None)]
    assert report.message_id == "legacy-0006@contoso.com"
    assert report.body_text == "Sent through an old Exchange 2003 journal."


def test_07_decrypted_copy_is_indexed_and_both_are_kept():
    report = parse_report(corpus("07-decrypted-copy.eml"))
    assert b"[rights-protected content]" in report.original
    assert report.decrypted is not None and b"Merger terms: 41 dollars per share." in report.decrypted
    assert report.body_text == "Merger terms: 41 dollars per share."
    assert report.content_sha256 == hashlib.sha256(report.original).hexdigest()
    assert report.message_id == "rms-0007@contoso.com"


def test_08_on_behalf_of_is_recorded():
    report = parse_report(corpus("08-on-behalf-of.eml"))
    assert report.envelope_sender == "assistant@contoso.com"
    assert report.on_behalf_of == "ceo@contoso.com"
    assert recipients(report) == [("board@fabrikam.com", "to", None, None)]


def test_09_two_reports_of_one_message_share_the_message_id_with_different_recipients():
    a = parse_report(corpus("09-duplicate-a.eml"))
    b = parse_report(corpus("09-duplicate-b.eml"))
    assert a.message_id == b.message_id == "split-0009@fabrikam.com"
    assert recipients(a) == [("tina@contoso.com", "to", None, None)]
    assert recipients(b) == [("uma@contoso.com", "to", None, None)]
    assert a.original == b.original and a.content_sha256 == b.content_sha256


def test_10_connector_validation_mail_is_archived_as_itself():
    raw = corpus("10-connector-validation.eml")
    report = parse_report(raw)
    assert not report.is_journal
    assert report.original == raw
    assert report.envelope_recipients == [] and report.envelope_sender is None
    assert report.subject == "Test message for connector validation"
    assert report.message_id == "validation-0010@contoso.com"
    assert report.to == ["archive@archive.archiva.com"]
    assert report.body_text == "This is a test message."


def test_11_original_without_message_id_has_a_content_hash():
    report = parse_report(corpus("11-no-message-id.eml"))
    assert report.message_id is None
    assert report.original.startswith(b"From: victor@contoso.com\r\n")
    assert report.content_sha256 == hashlib.sha256(report.original).hexdigest()
    assert len(report.content_sha256) == 64
    assert report.date == datetime(2026, 3, 4, 11, 0, tzinfo=UTC)


# --- the envelope part ---------------------------------------------------------------------


def test_envelope_lines_with_both_qualifiers_display_names_and_smtp_prefixes():
    envelope = parse_envelope(
        "Sender: Alice <ALICE@Contoso.com>\n"
        "On-Behalf-Of: ceo@contoso.com\n"
        "Message-Id: <x-1@contoso.com>\n"
        "To: Erin@Contoso.com, Expanded: Sales@contoso.com, Forwarded: carol@contoso.com\n"
        "Recipient: SMTP:peter@contoso.com\n"
        "Recipients: p1@contoso.com, p2@contoso.com\n"
        "To: erin@contoso.com, Expanded: sales@contoso.com, Forwarded: carol@contoso.com\n"
        "Bcc: dave@contoso.com\n"
        "Cc:\n"
        "garbage line without a colon\n"
    )
    assert envelope.sender == "alice@contoso.com" and envelope.on_behalf_of == "ceo@contoso.com"
    assert envelope.message_id == "x-1@contoso.com"
    assert envelope.recipients == [
        EnvelopeRecipient("erin@contoso.com", "to", expanded="sales@contoso.com", forwarded="carol@contoso.com"),
        EnvelopeRecipient("peter@contoso.com", "recipient"),
        EnvelopeRecipient("p1@contoso.com", "recipient"),
        EnvelopeRecipient("p2@contoso.com", "recipient"),
        EnvelopeRecipient("dave@contoso.com", "bcc"),
    ]


def test_envelope_part_in_base64_latin1_is_decoded():
    original = data_gen.mail(subject="Latin")
    report = data_gen.wrap_as_journal(original, recipients=["bob@fabrikam.com"])
    envelope = "Sender: jürgen@contoso.com\r\nSubject: Grüße\r\nBcc: zoë@contoso.com\r\n".encode("latin-1")
    report = report.replace(
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n',
        b'Content-Type: text/plain; charset="iso-8859-1"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(envelope).replace(b"\n", b"\r\n")
        + b"X-Ignored: ",
    )
    parsed = parse_report(report)
    assert parsed.envelope_sender == "jürgen@contoso.com"
    assert ("zoë@contoso.com", "bcc", None, None) in recipients(parsed)


def test_report_without_envelope_or_original_is_kept_and_says_so():
    raw = (
        b"X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b--\r\n"
    )
    report = parse_report(raw)
    assert report.is_journal and report.original == raw
    assert any("without an envelope" in p for p in report.problems)
    assert any("without the original" in p for p in report.problems)


def test_journal_header_on_a_single_part_message_is_archived_as_itself():
    raw = b"X-MS-Journal-Report:\r\nSubject: odd\r\n\r\nnot multipart\r\n"
    report = parse_report(raw)
    assert report.is_journal and report.original == raw and report.subject == "odd"
    assert report.problems == ["journal report is not multipart: archived as itself"]


def test_truncated_report_keeps_what_arrived():
    full = data_gen.wrap_as_journal(data_gen.mail(subject="Cut short", body="first line\nsecond line"))
    cut = full[: full.index(b"second line")]
    report = parse_report(cut)
    assert report.is_journal and report.subject == "Cut short"
    assert report.original.endswith(b"\r\n\r\nfirst line\r\n")
    assert "journal report truncated: no closing boundary" in report.problems


def test_original_in_base64_message_part_is_decoded():
    original = data_gen.mail(subject="Encoded wrapper")
    wrapped = data_gen.wrap_as_journal(original).replace(original, base64.encodebytes(original))
    wrapped = wrapped.replace(b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64")
    report = parse_report(wrapped)
    assert report.original == original and report.subject == "Encoded wrapper"


def test_binary_original_with_nul_bare_cr_and_invalid_utf8_is_intact():
    original = (
        b"From: mia@contoso.com\r\nSubject: bytes\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\nnul\x00 cr\r lone\xff\xfe end\n--not-a-boundary\r\n\r\n"
    )
    report = parse_report(data_gen.wrap_as_journal(original, cte="binary"))
    assert report.original == original
    assert report.body_text.startswith("nul\x00 cr\n lone\ufffd\ufffd end")


def test_exchange_2003_report_with_several_recipient_lines():
    raw = data_gen.wrap_as_journal(data_gen.mail(), exchange2003=True, recipients=["a@x.com", "b@x.com"])
    report = parse_report(raw)
    assert report.is_journal
    assert recipients(report) == [("a@x.com", "recipient", None, None), ("b@x.com", "recipient", None, None)]


def test_decrypted_copy_supplies_attachments_and_the_original_keeps_its_headers():
    protected = data_gen.mail(
        subject="Protected",
        body="[protected]",
        attachments=[("message.rpmsg", "application/x-microsoft-rpmsg-message", b"\x76\xe8\x04\x60junk")],
    )
    clear = data_gen.mail(
        subject="Protected",
        body="The plan",
        attachments=[("plan.pdf", "application/pdf", data_gen.pdf("Launch in May"))],
        message_id="",
    )
    report = parse_report(data_gen.wrap_as_journal(protected, decrypted=clear))
    assert report.original == protected and report.decrypted == clear
    assert report.message_id == "test-1@contoso.com"  # from the original
    assert report.body_text == "The plan"
    assert [a.filename for a in report.attachments] == ["plan.pdf"]
    assert "Launch in May" in report.attachments[0].text


def test_tnef_body_and_attachments_are_decoded():
    winmail = data_gen.tnef(
        "Body from Outlook", [("q3.pdf", data_gen.pdf("Quarter three")), ("notes.txt", b"plain notes")]
    )
    raw = data_gen.mail(body="", attachments=[("winmail.dat", "application/ms-tnef", winmail)])
    report = parse_report(data_gen.wrap_as_journal(raw))
    assert report.body_text == "Body from Outlook"
    assert [(a.filename, a.text, a.skipped) for a in report.attachments] == [
        ("q3.pdf", "Quarter three", ""),
        ("notes.txt", "plain notes", ""),
    ]


def test_tnef_compressed_rtf_body_is_decoded():
    raw = data_gen.mail(
        body="", attachments=[("winmail.dat", "application/octet-stream", data_gen.tnef(rtf_body="Rich body words"))]
    )
    report = parse_report(raw)
    assert report.body_text == "Rich body words" and report.attachments == []


@pytest.mark.parametrize(
    "winmail",
    [b"\x78\x9f\x3e\x22" + b"\xff" * 40, b"not tnef at all"],
)
def test_broken_tnef_is_listed_with_a_reason(winmail: bytes):
    raw = data_gen.mail(attachments=[("winmail.dat", "application/ms-tnef", winmail)])
    report = parse_report(raw)
    (winmail,) = report.attachments
    assert winmail.filename == "winmail.dat" and winmail.skipped.startswith("corrupt")


# --- headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?utf-8?q?caf=C3=A9?= =?utf-8?q?_cr=C3=A8me?=", "café crème"),
        (b"=?x-unknown?B?SGVsbG8=?=", "Hello"),
        (b"=?utf-8?B?SGVsbG8?=", "Hello"),  # missing padding
        (b"=?utf-8?B?%%%?= ok", "ok"),
        (b"=?iso-8859-1?q?Gr=FC=DFe?=", "Grüße"),
        (b"=?utf-8*en?q?lang_tag?=", "lang tag"),
        (b"raw utf-8 \xc3\xbcber", "raw utf-8 über"),
        (b"raw latin-1 \xfcber", "raw latin-1 über"),
        (b"=?ks_c_5601-1987?B?x9Gxub7u?=", "한국어"),
        (b"=?rot13?q?uryyb?=", "uryyb"),  # a codec, but not a text encoding
        (b"folded\r\n  line", "folded  line"),
    ],
)
def test_subject_headers_are_decoded_best_effort(subject: bytes, expected: str):
    raw = b"From: a@contoso.com\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"
    assert parse_report(raw).subject == expected


def test_addresses_are_lower_cased_addr_specs():
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <Juergen@Contoso.COM>\r\n"
        b'To: "Doe, Jane" <Jane@Fabrikam.com>, bob@FABRIKAM.com,\r\n undisclosed-recipients:;\r\n'
        b"Cc: x@y.com\r\nCc: z@y.com\r\nBcc: Hidden <h@contoso.com>\r\n\r\nbody"
    )
    report = parse_report(raw)
    assert report.from_addresses == ["juergen@contoso.com"]
    assert report.from_display == "Jürgen <Juergen@Contoso.COM>"
    assert report.to == ["jane@fabrikam.com", "bob@fabrikam.com"]
    assert report.cc == ["x@y.com", "z@y.com"] and report.bcc == ["h@contoso.com"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Mon, 02 Mar 2026 10:30:00 +0100", datetime(2026, 3, 2, 9, 30, tzinfo=UTC)),
        (b"Mon, 02 Mar 2026 09:30:00 -0000", datetime(2026, 3, 2, 9, 30, tzinfo=UTC)),
        (b"2 Mar 2026 09:30 GMT", datetime(2026, 3, 2, 9, 30, tzinfo=UTC)),
        (b"yesterday", None),
        (b"Mon, 99 Foo 99999999999 99:99:99 +9999", None),
        (b"", None),
    ],
)
def test_dates_become_aware_utc_or_none(value: bytes, expected: datetime | None):
    report = parse_report(b"Date: " + value + b"\r\nSubject: d\r\n\r\nx")
    assert report.date == expected


def test_message_id_without_brackets_and_with_junk():
    assert parse_report(b"Message-ID: bare-id@x.com\r\n\r\nx").message_id == "bare-id@x.com"
    assert parse_report(b"Message-ID: junk <a@b> <c@d>\r\n\r\nx").message_id == "a@b"
    assert parse_report(b"Message-ID: two words\r\n\r\nx").message_id is None


def test_envelope_message_id_is_used_when_the_original_has_none():
    raw = data_gen.wrap_as_journal(data_gen.mail(message_id=""), message_id="<env-1@contoso.com>")
    assert parse_report(raw).message_id == "env-1@contoso.com"


def test_from_falls_back_to_the_envelope_sender():
    raw = data_gen.wrap_as_journal(b"Subject: no from\r\n\r\nbody\r\n", sender="s@contoso.com")
    assert parse_report(raw).from_addresses == ["s@contoso.com"]


# --- never raises --------------------------------------------------------------------------------


def test_a_bug_of_ours_is_reported_not_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(journal, "_read_message", broken)
    raw = corpus("01-simple.eml")
    report = parse_report(raw)
    assert report.original == raw and report.content_sha256 == hashlib.sha256(raw).hexdigest()
    assert report.problems == ["parser failure: KeyError: 'boom'"]


@pytest.mark.parametrize(
    "raw", [b"", b"\r\n", b"\n\n\n", b":", b"X-MS-Journal-Report:", b"\xff" * 100, b"--\r\n" * 100]
)
def test_degenerate_inputs_do_not_raise(raw: bytes):
    report = parse_report(raw)
    assert report.content_sha256 == hashlib.sha256(report.original).hexdigest()


def test_bytearray_and_memoryview_are_accepted():
    raw = corpus("01-simple.eml")
    assert (
        parse_report(bytearray(raw)).message_id
        == parse_report(memoryview(raw)).message_id
        == "q3-numbers-0001@contoso.com"
    )


def test_deeply_nested_multiparts_do_not_exhaust_the_stack():
    depth = 3000
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw = b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    report = parse_report(raw)
    assert report.subject == "deep" and report.original == raw
    assert report.problems


def test_truncated_tnef_gives_what_arrived():
    winmail = data_gen.tnef("cut off body", [("a.txt", b"x" * 100)])[:-60]
    report = parse_report(data_gen.mail(body="", attachments=[("winmail.dat", "application/ms-tnef", winmail)]))
    assert report.body_text == "cut off body"
    assert [(a.filename, a.text) for a in report.attachments] == [("a.txt", "x" * 40)]


def test_8bit_body_is_decoded_from_its_own_bytes_whatever_the_label():
    raw = (
        b"Subject: s\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe\r\n"
    )
    assert parse_report(raw).body_text == "Grüße"
    assert parse_report(raw.replace(b"iso-8859-1", b"idna")).body_text == "Grüße"  # a codec, not a charset
    assert parse_report(raw.replace(b"iso-8859-1", b"koi8-r")).body_text == "GrЭъe"  # the label is trusted
